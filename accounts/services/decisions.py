"""The reviewer's side of an application: return for changes, approve and reject sizes.

A size's outcome changes only through `decision_move` (the table `SIZE_TRANSITIONS`)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from accounts import emails
from accounts.models import (
    Application,
    ApplicationState,
    Grant,
    SizeDecision,
    SizeOutcome,
)
from accounts.selectors import license_versions_pending
from accounts.services.audit import actor_ref, audit_record
from accounts.services.grants import grant_create
from accounts.services.transitions import (
    InvalidTransition,
    application_lock,
    application_move,
    application_target,
    decision_move,
    require_reviewer,
    size_event,
)
from catalog.models import AccessPolicy, ModelVariant
from core.errors import Conflict, InvalidInput


def application_return(
    *, application: Application, reviewer, message: str, note: str = ""
) -> Application:
    """Send a submitted application back to the applicant with what to change."""
    message = (message or "").strip()
    if not message:
        raise InvalidInput("Tell the applicant what to change.", extra={"field": "message"})
    with transaction.atomic():
        application = application_lock(application)
        require_reviewer(reviewer, application)
        application_move(
            application,
            ApplicationState.RETURNED,
            actor=reviewer,
            public_message=message,
            internal_note=note,
        )
        voided = decisions_void_first_approvals(application, actor=reviewer)
        audit_record(
            actor=reviewer,
            action="application.returned",
            target=application_target(application),
            data={"voided_first_approvals": voided} if voided else None,
        )
        emails.email_on_commit(
            to=application.email or application.user.email,
            template="application_returned",
            context={"application": application, "message": message},
        )
    return application


def _first_approval(decision: SizeDecision, to_outcome: str, *, by, at, ends_at) -> None:
    """Record (or, with None, clear) a two-reviewer size's first approval as it moves."""
    decision.first_approved_by, decision.first_approved_at = by, at
    decision.first_ends_at = ends_at
    decision_move(
        decision, to_outcome, fields=["first_approved_by", "first_approved_at", "first_ends_at"]
    )


def decisions_void_first_approvals(application: Application, *, actor) -> list[str]:
    """Send every first approval of a two-reviewer size back to pending.

    An application going back to its author may come back with another text (or without
    that size): a second reviewer must never complete an approval given to a text they did
    not both see. Returns the sizes whose first approval was voided.
    """
    voided = []
    for decision in application.decisions.select_for_update().select_related("variant"):
        if decision.outcome != SizeOutcome.AWAITING_SECOND:
            continue
        _first_approval(decision, SizeOutcome.PENDING, by=None, at=None, ends_at=None)
        size_event(
            application,
            actor=actor,
            variant=decision.variant,
            internal_note=f"First approval of {decision.variant} voided: the application went "
            "back to its author, so both approvals must be given to the text as resubmitted.",
        )
        voided.append(decision.variant.slug)
    return voided


def _decisions_for(
    application: Application, variants: Iterable[ModelVariant]
) -> list[SizeDecision]:
    wanted = {v.pk: v for v in variants}
    if not wanted:
        raise InvalidInput("Choose at least one model size to decide.")
    decisions = list(
        application.decisions.select_for_update()
        .filter(variant_id__in=wanted)
        .select_related("variant")
        .order_by("variant__position")
    )
    missing = set(wanted) - {d.variant_id for d in decisions}
    if missing:
        names = ", ".join(str(wanted[pk]) for pk in sorted(missing))
        raise InvalidInput(f"This application did not request {names}.")
    return decisions


def _require_submitted(application: Application) -> None:
    if application.state != ApplicationState.SUBMITTED:
        raise InvalidTransition(
            "Only a submitted application can be decided; this one is "
            f"{ApplicationState(application.state).label.lower()}."
        )


def approve_size(
    application: Application,
    decision: SizeDecision,
    *,
    actor,
    ends_at: datetime | None,
    message: str,
    note: str,
) -> Grant:
    now = timezone.now()
    user, _ = actor_ref(actor)
    decision.decided_by = user
    decision.decided_at = now
    decision_move(decision, SizeOutcome.APPROVED, fields=["decided_by", "decided_at"])
    grant = grant_create(
        user=application.user,
        variant=decision.variant,
        application=application,
        ends_at=ends_at,
        actor=actor,
    )
    size_event(
        application,
        actor=actor,
        variant=decision.variant,
        public_message=message
        or f"Access to {decision.variant} approved until {grant.ends_at:%Y-%m-%d}.",
        internal_note=note,
    )
    audit_record(
        actor=actor,
        action="size.approved",
        target=application_target(application),
        data={"size": decision.variant.slug, "grant": grant.pk, "automatic": user is None},
    )
    return grant


def settle(application: Application, *, actor) -> bool:
    """Close the application once every size is decided. Returns True when it closed."""
    decisions = list(application.decisions.select_related("variant"))
    if not decisions or any(d.is_undecided for d in decisions):
        return False
    approved = [d for d in decisions if d.outcome == SizeOutcome.APPROVED]
    to_state = ApplicationState.APPROVED if approved else ApplicationState.REJECTED
    application.decided_at = timezone.now()
    application_move(
        application,
        to_state,
        actor=actor,
        public_message="All requested sizes are decided.",
        extra_fields=["decided_at"],
    )
    audit_record(
        actor=actor,
        action=f"application.{to_state}",
        target=application_target(application),
        data={d.variant.slug: d.outcome for d in decisions},
    )
    # What the reviewers wrote to the applicant about each approved size (the approval's
    # event); rejections carry their reason on the decision itself.
    notes = dict(
        application.events.filter(variant__isnull=False)
        .exclude(public_message="")
        .order_by("id")
        .values_list("variant_id", "public_message")
    )
    rows = [
        (d, notes.get(d.variant_id, "") if d.outcome == SizeOutcome.APPROVED else "")
        for d in decisions
    ]
    emails.email_on_commit(
        to=application.email or application.user.email,
        template="application_decided",
        context={
            "application": application,
            "decisions": decisions,
            "rows": rows,
            "approved": bool(approved),
            # Asked only when a license in force for the new grants is not accepted yet.
            "license_pending": bool(approved)
            and bool(license_versions_pending(user=application.user)),
        },
    )
    return True


def application_approve(
    *,
    application: Application,
    reviewer,
    variants: Iterable[ModelVariant],
    ends_at: datetime | None = None,
    message: str = "",
    note: str = "",
) -> list[Grant]:
    """Approve some requested sizes. Returns the grants that took effect now.

    A size whose policy needs two reviewers takes effect on the second approval, which must
    come from a different reviewer.
    """
    if ends_at is not None and ends_at <= timezone.now():
        raise InvalidInput(
            "The grant's end date must be in the future.", extra={"field": "ends_at"}
        )
    with transaction.atomic():
        application = application_lock(application)
        require_reviewer(reviewer, application)
        _require_submitted(application)
        decisions = _decisions_for(application, variants)
        for decision in decisions:
            if not decision.is_undecided:
                raise Conflict(
                    f"{decision.variant} is already decided "
                    f"({SizeOutcome(decision.outcome).label.lower()})."
                )
            if (
                decision.outcome == SizeOutcome.AWAITING_SECOND
                and decision.first_approved_by_id == reviewer.pk
            ):
                raise Conflict(
                    f"{decision.variant} needs a second, different reviewer to confirm; "
                    "you gave the first approval.",
                    code="second_reviewer_required",
                )
        grants = []
        now = timezone.now()
        for decision in decisions:
            two = decision.variant.access_policy == AccessPolicy.TWO_REVIEWERS
            if two and decision.outcome == SizeOutcome.PENDING:
                _first_approval(
                    decision, SizeOutcome.AWAITING_SECOND, by=reviewer, at=now, ends_at=ends_at
                )
                size_event(
                    application,
                    actor=reviewer,
                    variant=decision.variant,
                    internal_note=note
                    or f"First approval of {decision.variant}; a second reviewer must confirm.",
                )
                audit_record(
                    actor=reviewer,
                    action="size.first_approval",
                    target=application_target(application),
                    data={"size": decision.variant.slug},
                )
                continue
            grants.append(
                approve_size(
                    application,
                    decision,
                    actor=reviewer,
                    ends_at=ends_at or decision.first_ends_at,
                    message=message,
                    note=note,
                )
            )
        settle(application, actor=reviewer)
    return grants


def application_reject(
    *,
    application: Application,
    reviewer,
    variants: Iterable[ModelVariant] | None = None,
    reason: str,
    note: str = "",
) -> Application:
    """Reject some requested sizes (all undecided ones when `variants` is None), with a reason."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(
            "Give the applicant a reason for the rejection.", extra={"field": "reason"}
        )
    with transaction.atomic():
        application = application_lock(application)
        require_reviewer(reviewer, application)
        _require_submitted(application)
        if variants is None:
            decisions = list(
                application.decisions.select_for_update()
                .filter(outcome__in=[SizeOutcome.PENDING, SizeOutcome.AWAITING_SECOND])
                .select_related("variant")
            )
        else:
            decisions = _decisions_for(application, variants)
        for decision in decisions:
            if not decision.is_undecided:
                raise Conflict(
                    f"{decision.variant} is already decided "
                    f"({SizeOutcome(decision.outcome).label.lower()})."
                )
        now = timezone.now()
        for decision in decisions:
            decision.reason = reason
            decision.decided_by = reviewer
            decision.decided_at = now
            decision_move(
                decision, SizeOutcome.REJECTED, fields=["reason", "decided_by", "decided_at"]
            )
            size_event(
                application,
                actor=reviewer,
                variant=decision.variant,
                public_message=f"{decision.variant} was not approved: {reason}",
                internal_note=note,
            )
            audit_record(
                actor=reviewer,
                action="size.rejected",
                target=application_target(application),
                data={"size": decision.variant.slug},
            )
        settle(application, actor=reviewer)
    return application
