"""Every write of the accounts domain: applications, decisions, grants, licenses, tokens, audit.

Each state change follows one pattern: lock the row, check the move against the one
transition table (`accounts.models.TRANSITIONS` / `GRANT_TRANSITIONS`), change it, write an
event row and an audit entry, and queue side effects (email, signals) for after the commit.
The review console (issue 4) calls the reviewer-facing services here; it holds no rules.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from accounts import emails
from accounts.models import (
    AUDIT_GENESIS,
    GRANT_TRANSITIONS,
    OPEN_STATES,
    TOKEN_PREFIX,
    TRANSITIONS,
    AccessToken,
    Application,
    ApplicationEvent,
    ApplicationState,
    AuditEntry,
    Grant,
    GrantStatus,
    LicenseAcceptance,
    SizeDecision,
    SizeOutcome,
    TokenScope,
    User,
)
from accounts.selectors import (
    license_current_version,
    user_is_reviewer,
    user_is_verified,
    variants_governed_by,
)
from accounts.signals import application_submitted, grant_revoked
from accounts.validators import orcid_error, orcid_normalize
from catalog.models import AccessPolicy, License, LicenseVersion, ModelVariant
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied


class InvalidTransition(Conflict):
    """A state change the transition table does not allow."""

    code = "invalid_transition"


# --- Audit log ---------------------------------------------------------------------------

# Any constant works; it only has to be the same for every process that appends.
_AUDIT_LOCK_KEY = 0x6C6C6170  # "llap"


def _clean_ip(ip: str | None) -> str | None:
    if not ip:
        return None
    try:
        return str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        return None


def _actor_ref(actor) -> tuple[User | None, str]:
    if actor is None or not getattr(actor, "is_authenticated", False):
        return None, ""
    return actor, f"{actor.pk}:{actor.email}"


def audit_record(
    *,
    actor,
    action: str,
    target: str = "",
    data: dict | None = None,
    ip: str | None = None,
) -> AuditEntry:
    """Append one entry to the hash-chained audit log."""
    # Normalise the data as the JSON column will return it, so the hash verifies later.
    clean = json.loads(json.dumps(data or {}, default=str, sort_keys=True))
    user, ref = _actor_ref(actor)
    with transaction.atomic():
        # Appends are serialised: two concurrent entries must not both link to one parent.
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_AUDIT_LOCK_KEY])
        last = AuditEntry.objects.order_by("-id").values_list("hash", flat=True).first()
        entry = AuditEntry(
            created_at=timezone.now(),
            actor=user,
            actor_ref=ref,
            action=action,
            target=str(target)[:300],
            data=clean,
            ip=_clean_ip(ip),
            prev_hash=last or AUDIT_GENESIS,
        )
        entry.hash = entry.compute_hash()
        entry.save()
    return entry


# --- Helpers -----------------------------------------------------------------------------


def _check_transition(application: Application, to_state: str) -> None:
    if to_state not in TRANSITIONS[application.state]:
        current = ApplicationState(application.state).label.lower()
        allowed = sorted(TRANSITIONS[application.state])
        allowed_text = ", ".join(allowed) if allowed else "nothing: it is final"
        raise InvalidTransition(
            f"This application is {current}; it cannot become {to_state}. "
            f"From {application.state} it can become: {allowed_text}.",
            extra={"state": application.state, "requested": to_state},
        )


def _lock(application: Application) -> Application:
    """Lock the row and refresh the caller's instance, so it sees the change it asked for."""
    application.refresh_from_db(from_queryset=Application.objects.select_for_update())
    return application


def _event(
    application: Application,
    *,
    actor,
    from_state: str,
    to_state: str,
    public_message: str = "",
    internal_note: str = "",
    variant: ModelVariant | None = None,
) -> ApplicationEvent:
    user, _ = _actor_ref(actor)
    return ApplicationEvent.objects.create(
        application=application,
        actor=user,
        from_state=from_state,
        to_state=to_state,
        variant=variant,
        public_message=public_message,
        internal_note=internal_note,
    )


def _move(
    application: Application,
    to_state: str,
    *,
    actor,
    public_message: str = "",
    internal_note: str = "",
    extra_fields: Iterable[str] = (),
) -> ApplicationEvent:
    _check_transition(application, to_state)
    from_state = application.state
    application.state = to_state
    application.save(update_fields=["state", "updated_at", *extra_fields])
    return _event(
        application,
        actor=actor,
        from_state=from_state,
        to_state=to_state,
        public_message=public_message,
        internal_note=internal_note,
    )


def _require_owner(application: Application, user) -> None:
    if user is None or application.user_id != getattr(user, "pk", None):
        raise NotFound("There is no such application on your account.")


def _require_reviewer(reviewer, application: Application) -> None:
    if not user_is_reviewer(reviewer):
        raise PermissionDenied("Only members of the reviewers group can decide applications.")
    if reviewer.pk == application.user_id:
        raise PermissionDenied("Reviewers cannot decide their own application.")


def _target(application: Application) -> str:
    return f"application:{application.pk}"


# --- Applications: the applicant's side -----------------------------------------------

# The fields an applicant fills in; everything else on Application is the portal's.
APPLICANT_FIELDS = (
    "full_name",
    "affiliation",
    "organization_type",
    "country",
    "position",
    "is_student",
    "supervisor_name",
    "supervisor_email",
    "orcid",
    "web_page",
    "publications",
    "use_case",
)
_PREFILL_FIELDS = tuple(f for f in APPLICANT_FIELDS if f != "use_case")


def use_case_min_chars() -> int:
    return int(getattr(settings, "ACCESS_USE_CASE_MIN_CHARS", 200))


def application_start(*, user) -> Application:
    """The user's open application, or a new draft prefilled from their last one.

    A new application after a rejection (or any final decision) links the earlier one.
    """
    with transaction.atomic():
        # Serialise per user, so two tabs cannot open two drafts.
        User.objects.select_for_update().filter(pk=user.pk).first()
        current = Application.objects.filter(user=user, state__in=OPEN_STATES).first()
        if current is not None:
            return current
        last = Application.objects.filter(user=user).order_by("-created_at", "-id").first()
        application = Application(user=user, previous=last, email=user.email)
        if last is not None:
            for field in _PREFILL_FIELDS:
                setattr(application, field, getattr(last, field))
        else:
            application.full_name = user.get_full_name()
        application.save()
        _event(application, actor=user, from_state="", to_state=ApplicationState.DRAFT)
    return application


def application_save_draft(
    *,
    application: Application,
    user,
    data: dict[str, Any],
    variants: Iterable[ModelVariant] | None = None,
) -> Application:
    """Store what the applicant typed, complete or not. Allowed while draft or returned."""
    with transaction.atomic():
        application = _lock(application)
        _require_owner(application, user)
        if application.state not in (ApplicationState.DRAFT, ApplicationState.RETURNED):
            raise InvalidTransition(
                "Only a draft or an application returned for changes can be edited; "
                f"this one is {ApplicationState(application.state).label.lower()}."
            )
        unknown = set(data) - set(APPLICANT_FIELDS)
        if unknown:
            raise InvalidInput(f"Unknown application fields: {', '.join(sorted(unknown))}")
        for field, value in data.items():
            if field == "orcid" and value:
                value = orcid_normalize(value)
            if isinstance(value, str):
                value = value.strip()
            setattr(application, field, value if value is not None else "")
        application.save()
        if variants is not None:
            application.requested_variants.set(list(variants))
    return application


def application_problems(application: Application) -> dict[str, list[str]]:
    """What stops this application from being submitted, by field ('' for the whole form)."""
    problems: dict[str, list[str]] = {}

    def add(field: str, message: str) -> None:
        problems.setdefault(field, []).append(message)

    for field, label in (
        ("full_name", "your full name"),
        ("affiliation", "your affiliation"),
        ("organization_type", "the type of organization"),
        ("country", "your country"),
        ("position", "your position"),
    ):
        if not str(getattr(application, field) or "").strip():
            add(field, f"Please give {label}.")
    if application.orcid:
        error = orcid_error(application.orcid)
        if error:
            add("orcid", error)
    minimum = use_case_min_chars()
    use_case = " ".join((application.use_case or "").split())
    if len(use_case) < minimum:
        add(
            "use_case",
            f"Describe the research you intend to do in at least {minimum} characters "
            f"(you wrote {len(use_case)}).",
        )
    if application.is_student:
        if not application.supervisor_name.strip():
            add("supervisor_name", "Students must name their supervisor.")
        if not application.supervisor_email.strip():
            add("supervisor_email", "Students must give their supervisor's email address.")
        elif application.supervisor_email.strip().lower() == application.user.email.lower():
            add("supervisor_email", "The supervisor's address must not be your own.")
    variants = list(application.requested_variants.all()) if application.pk else []
    if not variants:
        add("requested_variants", "Choose at least one model size.")
    for variant in variants:
        if not variant.is_published:
            add("requested_variants", f"{variant} is not offered.")
    if not user_is_verified(application.user):
        add("", "Verify your email address before you submit.")
    return problems


def _collect_flags(application: Application) -> list[str]:
    """Flags raised by the receivers of `application_submitted` (the review console's)."""
    flags: list[str] = []
    for _receiver, response in application_submitted.send(
        sender=Application, application=application
    ):
        if response:
            flags.extend(str(flag) for flag in response)
    return flags


def _sync_decisions(application: Application) -> None:
    requested = {v.pk: v for v in application.requested_variants.all()}
    existing = {d.variant_id: d for d in application.decisions.all()}
    for variant_id, decision in existing.items():
        if variant_id not in requested and decision.outcome == SizeOutcome.PENDING:
            decision.delete()
    SizeDecision.objects.bulk_create(
        [
            SizeDecision(application=application, variant=variant)
            for variant_id, variant in requested.items()
            if variant_id not in existing
        ]
    )


def application_submit(*, application: Application, user, ip: str | None = None) -> Application:
    """Submit a draft, or resubmit an application returned for changes.

    Sizes whose policy is automatic are approved at once when no flag is raised.
    """
    return _submit(application, user=user, ip=ip, only_returned=False)


def application_resubmit(*, application: Application, user, ip: str | None = None) -> Application:
    """Resubmit an application that a reviewer returned for changes."""
    return _submit(application, user=user, ip=ip, only_returned=True)


def _submit(application: Application, *, user, ip: str | None, only_returned: bool) -> Application:
    with transaction.atomic():
        application = _lock(application)
        _require_owner(application, user)
        if only_returned and application.state != ApplicationState.RETURNED:
            raise InvalidTransition(
                "Only an application returned for changes can be resubmitted; this one is "
                f"{ApplicationState(application.state).label.lower()}."
            )
        _check_transition(application, ApplicationState.SUBMITTED)
        problems = application_problems(application)
        if problems:
            raise InvalidInput(
                "The application is not complete: see the messages beside the fields.",
                code="incomplete",
                extra={"fields": problems},
            )
        resubmission = application.state == ApplicationState.RETURNED
        now = timezone.now()
        application.submitted_at = application.submitted_at or now
        application.last_submitted_at = now
        application.email = user.email
        application.submitted_ip = _clean_ip(ip)
        _move(
            application,
            ApplicationState.SUBMITTED,
            actor=user,
            public_message=(
                "You resubmitted your application." if resubmission else "Application received."
            ),
            extra_fields=["submitted_at", "last_submitted_at", "email", "submitted_ip"],
        )
        _sync_decisions(application)
        audit_record(
            actor=user,
            action="application.resubmitted" if resubmission else "application.submitted",
            target=_target(application),
            data={"sizes": [v.slug for v in application.requested_variants.all()]},
            ip=ip,
        )
        flags = _collect_flags(application)
        automatic = [
            d
            for d in application.decisions.select_related("variant")
            if d.outcome == SizeOutcome.PENDING
            and d.variant.access_policy == AccessPolicy.AUTOMATIC
        ]
        if automatic and flags:
            _event(
                application,
                actor=None,
                from_state=application.state,
                to_state=application.state,
                internal_note="Not approved automatically; flags: " + ", ".join(flags),
            )
        elif automatic:
            for decision in automatic:
                _approve_size(
                    application,
                    decision,
                    actor=None,
                    ends_at=None,
                    message="Approved automatically.",
                    note="",
                )
        settled = _settle(application, actor=None)
        if not settled:
            emails.email_on_commit(
                to=application.email,
                template="application_received",
                context={"application": application, "resubmission": resubmission},
            )
    return application


def application_withdraw(*, application: Application, user, message: str = "") -> Application:
    """The applicant takes back an application that is not decided yet."""
    with transaction.atomic():
        application = _lock(application)
        _require_owner(application, user)
        _check_transition(application, ApplicationState.WITHDRAWN)
        _move(
            application,
            ApplicationState.WITHDRAWN,
            actor=user,
            public_message=message or "You withdrew the application.",
        )
        application.decisions.filter(
            outcome__in=[SizeOutcome.PENDING, SizeOutcome.AWAITING_SECOND]
        ).update(outcome=SizeOutcome.WITHDRAWN, decided_at=timezone.now())
        audit_record(actor=user, action="application.withdrawn", target=_target(application))
    return application


# --- Applications: the reviewer's side ------------------------------------------------


def application_return(
    *, application: Application, reviewer, message: str, note: str = ""
) -> Application:
    """Send a submitted application back to the applicant with what to change."""
    message = (message or "").strip()
    if not message:
        raise InvalidInput("Tell the applicant what to change.", extra={"field": "message"})
    with transaction.atomic():
        application = _lock(application)
        _require_reviewer(reviewer, application)
        _move(
            application,
            ApplicationState.RETURNED,
            actor=reviewer,
            public_message=message,
            internal_note=note,
        )
        audit_record(actor=reviewer, action="application.returned", target=_target(application))
        emails.email_on_commit(
            to=application.email or application.user.email,
            template="application_returned",
            context={"application": application, "message": message},
        )
    return application


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


def _approve_size(
    application: Application,
    decision: SizeDecision,
    *,
    actor,
    ends_at: datetime | None,
    message: str,
    note: str,
) -> Grant:
    now = timezone.now()
    user, _ = _actor_ref(actor)
    decision.outcome = SizeOutcome.APPROVED
    decision.decided_by = user
    decision.decided_at = now
    decision.save(update_fields=["outcome", "decided_by", "decided_at"])
    grant = grant_create(
        user=application.user,
        variant=decision.variant,
        application=application,
        ends_at=ends_at,
        actor=actor,
    )
    _event(
        application,
        actor=actor,
        from_state=application.state,
        to_state=application.state,
        variant=decision.variant,
        public_message=message
        or f"Access to {decision.variant} approved until {grant.ends_at:%Y-%m-%d}.",
        internal_note=note,
    )
    audit_record(
        actor=actor,
        action="size.approved",
        target=_target(application),
        data={"size": decision.variant.slug, "grant": grant.pk, "automatic": user is None},
    )
    return grant


def _settle(application: Application, *, actor) -> bool:
    """Close the application once every size is decided. Returns True when it closed."""
    decisions = list(application.decisions.select_related("variant"))
    if not decisions or any(d.is_undecided for d in decisions):
        return False
    approved = [d for d in decisions if d.outcome == SizeOutcome.APPROVED]
    to_state = ApplicationState.APPROVED if approved else ApplicationState.REJECTED
    application.decided_at = timezone.now()
    _move(
        application,
        to_state,
        actor=actor,
        public_message="All requested sizes are decided.",
        extra_fields=["decided_at"],
    )
    audit_record(
        actor=actor,
        action=f"application.{to_state}",
        target=_target(application),
        data={d.variant.slug: d.outcome for d in decisions},
    )
    emails.email_on_commit(
        to=application.email or application.user.email,
        template="application_decided",
        context={"application": application, "decisions": decisions, "approved": bool(approved)},
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
        application = _lock(application)
        _require_reviewer(reviewer, application)
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
                decision.outcome = SizeOutcome.AWAITING_SECOND
                decision.first_approved_by = reviewer
                decision.first_approved_at = now
                decision.first_ends_at = ends_at
                decision.save(
                    update_fields=[
                        "outcome",
                        "first_approved_by",
                        "first_approved_at",
                        "first_ends_at",
                    ]
                )
                _event(
                    application,
                    actor=reviewer,
                    from_state=application.state,
                    to_state=application.state,
                    variant=decision.variant,
                    internal_note=note
                    or f"First approval of {decision.variant}; a second reviewer must confirm.",
                )
                audit_record(
                    actor=reviewer,
                    action="size.first_approval",
                    target=_target(application),
                    data={"size": decision.variant.slug},
                )
                continue
            grants.append(
                _approve_size(
                    application,
                    decision,
                    actor=reviewer,
                    ends_at=ends_at or decision.first_ends_at,
                    message=message,
                    note=note,
                )
            )
        _settle(application, actor=reviewer)
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
        application = _lock(application)
        _require_reviewer(reviewer, application)
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
            decision.outcome = SizeOutcome.REJECTED
            decision.reason = reason
            decision.decided_by = reviewer
            decision.decided_at = now
            decision.save(update_fields=["outcome", "reason", "decided_by", "decided_at"])
            _event(
                application,
                actor=reviewer,
                from_state=application.state,
                to_state=application.state,
                variant=decision.variant,
                public_message=f"{decision.variant} was not approved: {reason}",
                internal_note=note,
            )
            audit_record(
                actor=reviewer,
                action="size.rejected",
                target=_target(application),
                data={"size": decision.variant.slug},
            )
        _settle(application, actor=reviewer)
    return application


# --- Grants ------------------------------------------------------------------------------


def grant_create(
    *,
    user,
    variant: ModelVariant,
    application: Application | None = None,
    ends_at: datetime | None = None,
    actor=None,
) -> Grant:
    """Give access to one size until `ends_at` (default: the size's `grant_days`).

    A person has at most one active grant per size: a new approval extends it.
    """
    now = timezone.now()
    ends_at = ends_at or now + timedelta(days=variant.grant_days)
    with transaction.atomic():
        current = (
            Grant.objects.select_for_update()
            .filter(user=user, variant=variant, status=GrantStatus.ACTIVE)
            .first()
        )
        if current is not None and current.ends_at <= now:
            _grant_move(current, GrantStatus.EXPIRED, actor=None)
            current = None
        if current is not None:
            current.ends_at = max(current.ends_at, ends_at)
            current.expiry_notified_at = None
            current.save(update_fields=["ends_at", "expiry_notified_at"])
            audit_record(
                actor=actor,
                action="grant.extended",
                target=f"grant:{current.pk}",
                data={"user": user.pk, "size": variant.slug, "ends_at": current.ends_at},
            )
            return current
        grant = Grant.objects.create(
            user=user, variant=variant, application=application, starts_at=now, ends_at=ends_at
        )
        audit_record(
            actor=actor,
            action="grant.created",
            target=f"grant:{grant.pk}",
            data={"user": user.pk, "size": variant.slug, "ends_at": ends_at},
        )
    return grant


def _grant_move(grant: Grant, to_status: str, *, actor, fields: Iterable[str] = ()) -> None:
    if to_status not in GRANT_TRANSITIONS[grant.status]:
        raise InvalidTransition(
            f"This grant is {grant.status}; it cannot become {to_status}.",
            extra={"status": grant.status, "requested": to_status},
        )
    grant.status = to_status
    grant.save(update_fields=["status", *fields])
    audit_record(
        actor=actor,
        action=f"grant.{to_status}",
        target=f"grant:{grant.pk}",
        data={"user": grant.user_id, "size": grant.variant.slug, "reason": grant.revoke_reason},
    )


def grant_revoke(*, grant: Grant, actor, reason: str) -> Grant:
    """End a grant now. Links, tokens and jobs stop at once (tokens are revoked; the jobs
    app listens to `grant_revoked`)."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Give a reason for the revocation.", extra={"field": "reason"})
    if actor is not None and not user_is_reviewer(actor):
        raise PermissionDenied("Only reviewers can revoke access.")
    with transaction.atomic():
        grant.refresh_from_db(from_queryset=Grant.objects.select_for_update())
        grant.revoked_at = timezone.now()
        grant.revoked_by, _ = _actor_ref(actor)
        grant.revoke_reason = reason
        _grant_move(
            grant,
            GrantStatus.REVOKED,
            actor=actor,
            fields=["revoked_at", "revoked_by", "revoke_reason"],
        )
        token_revoke_all(user=grant.user, reason="access revoked")
        if grant.application_id:
            _event(
                grant.application,
                actor=actor,
                from_state=grant.application.state,
                to_state=grant.application.state,
                variant=grant.variant,
                public_message=f"Your access to {grant.variant} was revoked: {reason}",
            )
        transaction.on_commit(lambda: grant_revoked.send(sender=Grant, grant=grant))
        emails.email_on_commit(
            to=grant.user.email, template="grant_revoked", context={"grant": grant}
        )
    return grant


def grant_expire_due(*, now: datetime | None = None) -> int:
    """Mark grants past their end as expired. Idempotent; returns how many changed."""
    now = now or timezone.now()
    count = 0
    ids = list(
        Grant.objects.filter(status=GrantStatus.ACTIVE, ends_at__lte=now).values_list(
            "pk", flat=True
        )
    )
    for pk in ids:
        with transaction.atomic():
            # The conditional update is the claim: a concurrent run changes nothing twice.
            if Grant.objects.filter(pk=pk, status=GrantStatus.ACTIVE).update(
                status=GrantStatus.EXPIRED
            ):
                grant = Grant.objects.select_related("variant").get(pk=pk)
                audit_record(
                    actor=None,
                    action="grant.expired",
                    target=f"grant:{pk}",
                    data={"user": grant.user_id, "size": grant.variant.slug},
                )
                count += 1
    return count


def grant_notify_expiring(*, within_days: int | None = None, now: datetime | None = None) -> int:
    """Email each grantee once whose grant ends within `within_days`. Returns emails queued."""
    now = now or timezone.now()
    if within_days is None:
        within_days = int(getattr(settings, "ACCESS_GRANT_EXPIRY_NOTICE_DAYS", 14))
    due = Grant.objects.filter(
        status=GrantStatus.ACTIVE,
        ends_at__gt=now,
        ends_at__lte=now + timedelta(days=within_days),
        expiry_notified_at__isnull=True,
    ).values_list("pk", flat=True)
    count = 0
    for pk in list(due):
        with transaction.atomic():
            if Grant.objects.filter(pk=pk, expiry_notified_at__isnull=True).update(
                expiry_notified_at=now
            ):
                grant = Grant.objects.select_related("user", "variant").get(pk=pk)
                emails.email_on_commit(
                    to=grant.user.email, template="grant_expiring", context={"grant": grant}
                )
                count += 1
    return count


# --- Licenses ----------------------------------------------------------------------------


def license_text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def license_publish_version(
    *,
    license: License,
    title: str,
    text: str,
    effective_at: datetime | None = None,
    actor=None,
) -> LicenseVersion:
    """Publish a new version. Every current grantee must accept it before further use."""
    if not text.strip() or not title.strip():
        raise InvalidInput("A license version needs a title and a text.")
    with transaction.atomic():
        License.objects.select_for_update().get(pk=license.pk)
        last = license.versions.order_by("-version").first()
        version = LicenseVersion.objects.create(
            license=license,
            version=(last.version + 1) if last else 1,
            title=title.strip(),
            text=text,
            sha256=license_text_sha256(text),
            effective_at=effective_at or timezone.now(),
        )
        audit_record(
            actor=actor,
            action="license.published",
            target=f"license:{license.slug}",
            data={"version": version.version, "sha256": version.sha256},
        )
        if last is not None:
            now = timezone.now()
            grantees = (
                User.objects.filter(
                    grants__status=GrantStatus.ACTIVE,
                    grants__ends_at__gt=now,
                    grants__variant__in=variants_governed_by(license),
                    is_active=True,
                )
                .distinct()
                .values_list("email", flat=True)
            )
            for email in grantees:
                emails.email_on_commit(
                    to=email, template="license_updated", context={"version": version}
                )
    return version


def license_accept(
    *,
    user,
    version: LicenseVersion,
    typed_name: str,
    ip: str | None = None,
    user_agent: str = "",
) -> LicenseAcceptance:
    """Record that `user` accepted `version` by typing their full name."""
    typed = " ".join((typed_name or "").split())
    if len(typed) < 2:
        raise InvalidInput(
            "Type your full name to accept the license.", extra={"field": "typed_name"}
        )
    expected = user_full_name(user)
    if expected and typed.casefold() != " ".join(expected.split()).casefold():
        raise InvalidInput(
            f"Type your full name exactly as on your application ({expected}).",
            extra={"field": "typed_name"},
        )
    current = license_current_version(version.license)
    if current is None or current.pk != version.pk:
        raise Conflict(
            "This is not the current version of the license; reload the page and read the "
            "current one.",
            code="license_outdated",
        )
    with transaction.atomic():
        existing = LicenseAcceptance.objects.filter(user=user, version=version).first()
        if existing is not None:
            return existing
        acceptance = LicenseAcceptance.objects.create(
            user=user,
            version=version,
            text_sha256=version.sha256,
            typed_name=typed,
            ip=_clean_ip(ip),
            user_agent=(user_agent or "")[:1000],
        )
        audit_record(
            actor=user,
            action="license.accepted",
            target=f"license:{version.license.slug}",
            data={"version": version.version, "sha256": version.sha256},
            ip=ip,
        )
    return acceptance


def user_full_name(user) -> str:
    """The name a person must type to accept the license: their application's, else account's."""
    name = (
        Application.objects.filter(user=user)
        .exclude(full_name="")
        .order_by("-created_at", "-id")
        .values_list("full_name", flat=True)
        .first()
    )
    return name or user.get_full_name()


# --- Personal access tokens --------------------------------------------------------------

TOKEN_MAX_DAYS = 366
TOKEN_MAX_PER_USER = 20


def token_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def token_create(
    *,
    user,
    name: str,
    scopes: Iterable[str],
    expires_in_days: int = 90,
) -> tuple[AccessToken, str]:
    """Create a token; returns it with its key, which is shown once and never stored."""
    name = (name or "").strip()
    scopes = sorted(set(scopes))
    if not name:
        raise InvalidInput("Give the token a name you will recognise.", extra={"field": "name"})
    valid = set(TokenScope.values)
    if not scopes or not set(scopes) <= valid:
        raise InvalidInput(
            f"Choose scopes among: {', '.join(sorted(valid))}.", extra={"field": "scopes"}
        )
    if not 1 <= expires_in_days <= TOKEN_MAX_DAYS:
        raise InvalidInput(
            f"A token lives between 1 and {TOKEN_MAX_DAYS} days.", extra={"field": "expires"}
        )
    if not user.is_active:
        raise PermissionDenied("This account is deactivated.", code="inactive")
    now = timezone.now()
    live = AccessToken.objects.filter(user=user, revoked_at__isnull=True, expires_at__gt=now)
    if live.count() >= TOKEN_MAX_PER_USER:
        raise Conflict(f"You have {TOKEN_MAX_PER_USER} live tokens; revoke one first.")
    with transaction.atomic():
        for _attempt in range(5):
            key = TOKEN_PREFIX + secrets.token_urlsafe(32)
            # The display/lookup prefix is unique; 48 random bits rarely collide, but may.
            if not AccessToken.objects.filter(prefix=key[:12]).exists():
                break
        token = AccessToken.objects.create(
            user=user,
            name=name[:100],
            prefix=key[:12],
            key_hash=token_hash(key),
            scopes=scopes,
            expires_at=now + timedelta(days=expires_in_days),
        )
        audit_record(
            actor=user,
            action="token.created",
            target=f"token:{token.pk}",
            data={"prefix": token.prefix, "scopes": scopes, "expires_at": token.expires_at},
        )
    return token, key


def token_find(key: str) -> AccessToken | None:
    """The token this key belongs to (revoked or expired included), or None."""
    if not key.startswith(TOKEN_PREFIX) or len(key) < 20:
        return None
    candidate = AccessToken.objects.select_related("user").filter(prefix=key[:12]).first()
    if candidate is None or not hmac.compare_digest(candidate.key_hash, token_hash(key)):
        return None
    return candidate


def token_touch(*, token: AccessToken) -> None:
    """Record use; written at most once a minute per token, to keep requests cheap."""
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        AccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now


def token_revoke(*, token: AccessToken, actor, reason: str = "revoked by its owner") -> AccessToken:
    if actor is None or (actor.pk != token.user_id and not user_is_reviewer(actor)):
        raise NotFound("There is no such token on your account.")
    with transaction.atomic():
        token.refresh_from_db(from_queryset=AccessToken.objects.select_for_update())
        if token.revoked_at is not None:
            raise Conflict("This token is already revoked.")
        token.revoked_at = timezone.now()
        token.revoke_reason = reason[:200]
        token.save(update_fields=["revoked_at", "revoke_reason"])
        audit_record(
            actor=actor,
            action="token.revoked",
            target=f"token:{token.pk}",
            data={"prefix": token.prefix, "reason": reason},
        )
    return token


def token_revoke_all(*, user, reason: str) -> int:
    """Revoke every live token of a user (deactivation, password change, revoked access)."""
    with transaction.atomic():
        count = AccessToken.objects.filter(user=user, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoke_reason=reason[:200]
        )
        if count:
            audit_record(
                actor=None,
                action="token.revoked_all",
                target=f"user:{user.pk}",
                data={"count": count, "reason": reason},
            )
    return count


# --- Accounts ----------------------------------------------------------------------------


def user_deactivate(*, user, actor, reason: str) -> None:
    """Deactivate an account: it can no longer sign in, and its tokens die."""
    with transaction.atomic():
        User.objects.filter(pk=user.pk).update(is_active=False)
        user.is_active = False
        token_revoke_all(user=user, reason="account deactivated")
        audit_record(
            actor=actor,
            action="user.deactivated",
            target=f"user:{user.pk}",
            data={"reason": reason},
        )
