"""Every write of the review console: claims, notes, flags, and the reviewer's actions.

Decisions themselves belong to `accounts.services` (transition table, events, audit,
emails); the functions here add what the console owns around them: the claim that keeps
two reviewers off one application, and bulk runs that decide applications one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import services as accounts_services
from accounts.flags import FlagResult, flags_compute
from accounts.models import (
    Application,
    ApplicationState,
    Grant,
    SizeDecision,
    SizeOutcome,
)
from accounts.selectors import user_is_reviewer
from catalog.models import ModelVariant
from core.errors import Conflict, InvalidInput, PermissionDenied, PortalError
from review.models import Claim, Flag, InternalNote, NoteKind

logger = logging.getLogger(__name__)

NOTE_MAX_CHARS = 5000


def _require_reviewer(user) -> None:
    if not user_is_reviewer(user):
        raise PermissionDenied("Only members of the reviewers group can use the review console.")


def _target(application: Application) -> str:
    return f"application:{application.pk}"


# --- Flags ----------------------------------------------------------------------------------


def flags_record(*, application: Application, results: list[FlagResult] | None = None) -> list[str]:
    """Store the application's flags (computed now unless given), replacing earlier ones."""
    if results is None:
        results = flags_compute(application)
    with transaction.atomic():
        Flag.objects.filter(application_id=application.pk).delete()
        Flag.objects.bulk_create(
            [
                Flag(
                    application_id=application.pk,
                    code=r.code,
                    detail=r.detail[:500],
                    related_application_id=r.related_application_id,
                )
                for r in results
            ]
        )
    return [str(r.code) for r in results]


# --- Claims ---------------------------------------------------------------------------------


def _claim_locked(application: Application) -> Claim | None:
    return (
        Claim.objects.select_for_update()
        .select_related("reviewer")
        .filter(application_id=application.pk)
        .first()
    )


def _claimed_by_other(claim: Claim) -> Conflict:
    return Conflict(
        f"{claim.reviewer.display_name} is working on this application (claimed "
        f"{claim.claimed_at:%Y-%m-%d %H:%M} UTC). Take it over with a note if you must act.",
        code="claimed",
        extra={"claimed_by": claim.reviewer.email},
    )


def claim_take(*, application: Application, reviewer) -> Claim:
    """Claim an application that nobody works on. A claim by someone else is a 409."""
    _require_reviewer(reviewer)
    if application.state not in (ApplicationState.SUBMITTED, ApplicationState.RETURNED):
        raise Conflict("Only applications in the queue (submitted or returned) can be claimed.")
    with transaction.atomic():
        claim = _claim_locked(application)
        if claim is not None:
            if claim.reviewer_id == reviewer.pk:
                return claim
            raise _claimed_by_other(claim)
        try:
            # The primary key is the application: of two concurrent claims one insert fails.
            with transaction.atomic():
                claim = Claim.objects.create(application_id=application.pk, reviewer=reviewer)
        except IntegrityError:
            raise Conflict(
                "Another reviewer claimed this application a moment ago; reload the page.",
                code="claimed",
            ) from None
        accounts_services.audit_record(
            actor=reviewer, action="review.claimed", target=_target(application)
        )
    return claim


def claim_release(*, application: Application, reviewer) -> None:
    """Give up one's own claim."""
    _require_reviewer(reviewer)
    with transaction.atomic():
        claim = _claim_locked(application)
        if claim is None:
            raise Conflict("Nobody has claimed this application.")
        if claim.reviewer_id != reviewer.pk:
            raise _claimed_by_other(claim)
        claim.delete()
        accounts_services.audit_record(
            actor=reviewer, action="review.released", target=_target(application)
        )


def claim_take_over(*, application: Application, reviewer, note: str) -> Claim:
    """Take a claim from another reviewer, saying why (the note goes to the internal notes)."""
    _require_reviewer(reviewer)
    note = (note or "").strip()
    if not note:
        raise InvalidInput(
            "Say why you take this application over; the other reviewer will read it.",
            extra={"field": "note"},
        )
    with transaction.atomic():
        claim = _claim_locked(application)
        if claim is None:
            return claim_take(application=application, reviewer=reviewer)
        if claim.reviewer_id == reviewer.pk:
            return claim
        previous = claim.reviewer
        claim.reviewer = reviewer
        claim.claimed_at = timezone.now()
        claim.save(update_fields=["reviewer", "claimed_at"])
        InternalNote.objects.create(
            application_id=application.pk,
            author=reviewer,
            kind=NoteKind.CLAIM,
            text=f"Took over from {previous.display_name}: {note[:NOTE_MAX_CHARS]}",
        )
        accounts_services.audit_record(
            actor=reviewer,
            action="review.taken_over",
            target=_target(application),
            data={"from": previous.email, "note": note[:500]},
        )
    return claim


def _hold_claim(application: Application, reviewer) -> None:
    """Before an action: the reviewer holds the claim, taking it when nobody does."""
    claim = _claim_locked(application)
    if claim is None:
        claim_take(application=application, reviewer=reviewer)
    elif claim.reviewer_id != reviewer.pk:
        raise _claimed_by_other(claim)


def _release_when_done(application: Application, reviewer) -> None:
    """After an action: drop the claim when the reviewer has nothing left to do here.

    That is when the application left review (decided, returned), or when only second
    approvals remain, which must come from someone else.
    """
    application.refresh_from_db(fields=["state"])
    done = application.state != ApplicationState.SUBMITTED
    if not done:
        outcomes = set(
            SizeDecision.objects.filter(application_id=application.pk).values_list(
                "outcome", flat=True
            )
        )
        done = SizeOutcome.PENDING not in outcomes
    if done:
        deleted, _ = Claim.objects.filter(
            application_id=application.pk, reviewer_id=reviewer.pk
        ).delete()
        if deleted:
            accounts_services.audit_record(
                actor=reviewer,
                action="review.released",
                target=_target(application),
                data={"automatic": True},
            )


# --- Notes ----------------------------------------------------------------------------------


def note_add(*, application: Application, author, text: str) -> InternalNote:
    """An internal note: for reviewers only, never shown to the applicant."""
    _require_reviewer(author)
    text = (text or "").strip()
    if not text:
        raise InvalidInput("The note is empty.", extra={"field": "text"})
    if len(text) > NOTE_MAX_CHARS:
        raise InvalidInput(
            f"Keep a note under {NOTE_MAX_CHARS} characters (this one has {len(text)}).",
            extra={"field": "text"},
        )
    with transaction.atomic():
        note = InternalNote.objects.create(application_id=application.pk, author=author, text=text)
        accounts_services.audit_record(
            actor=author, action="review.note_added", target=_target(application)
        )
    return note


# --- Decisions ------------------------------------------------------------------------------


def review_approve(
    *,
    application: Application,
    reviewer,
    variants: Iterable[ModelVariant],
    ends_at: datetime | None = None,
    message: str = "",
    note: str = "",
) -> list[Grant]:
    """Approve sizes (a first approval where the size needs two reviewers)."""
    _require_reviewer(reviewer)
    with transaction.atomic():
        _hold_claim(application, reviewer)
        grants = accounts_services.application_approve(
            application=application,
            reviewer=reviewer,
            variants=list(variants),
            ends_at=ends_at,
            message=message,
            note=note,
        )
        _release_when_done(application, reviewer)
    return grants


def review_reject(
    *,
    application: Application,
    reviewer,
    reason: str,
    variants: Iterable[ModelVariant] | None = None,
    note: str = "",
) -> Application:
    """Reject sizes (every undecided one when `variants` is None) with a reason."""
    _require_reviewer(reviewer)
    with transaction.atomic():
        _hold_claim(application, reviewer)
        application = accounts_services.application_reject(
            application=application,
            reviewer=reviewer,
            variants=list(variants) if variants is not None else None,
            reason=reason,
            note=note,
        )
        _release_when_done(application, reviewer)
    return application


def review_return(
    *, application: Application, reviewer, message: str, note: str = ""
) -> Application:
    """Return the application to the applicant for changes."""
    _require_reviewer(reviewer)
    with transaction.atomic():
        _hold_claim(application, reviewer)
        application = accounts_services.application_return(
            application=application, reviewer=reviewer, message=message, note=note
        )
        _release_when_done(application, reviewer)
    return application


def review_revoke_grant(*, grant: Grant, reviewer, reason: str) -> Grant:
    """Revoke a grant now: links, tokens and jobs stop (accounts.services.grant_revoke)."""
    _require_reviewer(reviewer)
    return accounts_services.grant_revoke(grant=grant, actor=reviewer, reason=reason)


# --- Bulk -----------------------------------------------------------------------------------


@dataclass
class BulkResult:
    done: list[Application] = field(default_factory=list)
    failed: list[tuple[Application, str]] = field(default_factory=list)


def _approvable(application: Application, reviewer) -> list[ModelVariant]:
    return [
        d.variant
        for d in application.decisions.select_related("variant")
        if d.outcome == SizeOutcome.PENDING
        or (d.outcome == SizeOutcome.AWAITING_SECOND and d.first_approved_by_id != reviewer.pk)
    ]


def review_bulk_approve(
    *, applications: Iterable[Application], reviewer, ends_at: datetime | None = None
) -> BulkResult:
    """Approve every size each application still waits for, one application at a time:
    one that cannot be approved (claimed by someone else, already decided) is reported and
    does not stop the others."""
    _require_reviewer(reviewer)
    result = BulkResult()
    for application in applications:
        try:
            with transaction.atomic():
                variants = _approvable(application, reviewer)
                if not variants:
                    raise Conflict("Nothing left that you can approve.")
                review_approve(
                    application=application, reviewer=reviewer, variants=variants, ends_at=ends_at
                )
        except PortalError as exc:
            result.failed.append((application, exc.message))
        else:
            result.done.append(application)
    return result


def review_bulk_reject(*, applications: Iterable[Application], reviewer, reason: str) -> BulkResult:
    """Reject every undecided size of each application with one reason."""
    _require_reviewer(reviewer)
    if not (reason or "").strip():
        raise InvalidInput("Give the applicants a reason for the rejection.")
    result = BulkResult()
    for application in applications:
        try:
            with transaction.atomic():
                review_reject(application=application, reviewer=reviewer, reason=reason)
        except PortalError as exc:
            result.failed.append((application, exc.message))
        else:
            result.done.append(application)
    return result
