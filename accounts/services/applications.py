"""The applicant's side of an application: start, draft, submit, resubmit, withdraw.

Submission computes the automatic flags and approves automatic-policy sizes only when
none is raised (`accounts.services.decisions` does the approving)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts import emails
from accounts.flags import FlagCode, flags_compute
from accounts.models import (
    OPEN_STATES,
    Application,
    ApplicationState,
    GrantStatus,
    SizeDecision,
    SizeOutcome,
    User,
)
from accounts.selectors import (
    user_is_verified,
)
from accounts.services.audit import audit_record, clean_ip
from accounts.services.decisions import approve_size, decisions_void_first_approvals, settle
from accounts.services.grants import grant_revoke
from accounts.services.transitions import (
    InvalidTransition,
    application_check_move,
    application_event,
    application_lock,
    application_move,
    application_target,
    decision_move,
    require_owner,
    size_event,
)
from accounts.signals import application_submitted
from accounts.validators import orcid_error, orcid_normalize
from catalog.models import AccessPolicy, ModelVariant
from catalog.services import card_versions_record_seen
from core.errors import InvalidInput

logger = logging.getLogger(__name__)

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
# A new application starts from the last one, research use included: the applicant edits
# what changed instead of writing it again.
_PREFILL_FIELDS = APPLICANT_FIELDS


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
        application_event(application, actor=user, from_state="", to_state=ApplicationState.DRAFT)
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
        application = application_lock(application)
        require_owner(application, user)
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


def _flags(application: Application) -> list[str]:
    """The application's flags, computed here and now, and sent to whoever records them (the
    review console). If they cannot be computed, the answer is one flag that says so: an
    application is never approved unchecked because of a bug or an outage."""
    try:
        # A savepoint: a failing query must not poison the applicant's submitting transaction.
        with transaction.atomic():
            results = flags_compute(application)
    except Exception:
        logger.exception("could not compute the flags of application %s", application.pk)
        return [FlagCode.FLAGS_UNAVAILABLE.value]
    application_submitted.send(sender=Application, application=application, flags=results)
    return [str(result.code) for result in results]


def _sync_decisions(application: Application, *, actor) -> None:
    """One decision row per requested size. A size no longer requested loses its undecided
    row (a first approval included), so it can never be decided or granted."""
    requested = {v.pk: v for v in application.requested_variants.all()}
    existing = {d.variant_id: d for d in application.decisions.select_related("variant")}
    for variant_id, decision in existing.items():
        if variant_id not in requested and decision.is_undecided:
            decision.delete()
    SizeDecision.objects.bulk_create(
        [
            SizeDecision(application=application, variant=variant)
            for variant_id, variant in requested.items()
            if variant_id not in existing
        ]
    )


def _keep_cards_seen(application: Application, *, at) -> None:
    """Keep with the application the model-card version of each requested size that was
    current at this submission: the one the form linked the applicant to."""
    card_versions_record_seen(
        application_id=application.pk, variants=application.requested_variants.all(), at=at
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
        application = application_lock(application)
        require_owner(application, user)
        if only_returned and application.state != ApplicationState.RETURNED:
            raise InvalidTransition(
                "Only an application returned for changes can be resubmitted; this one is "
                f"{ApplicationState(application.state).label.lower()}."
            )
        application_check_move(application, ApplicationState.SUBMITTED)
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
        application.submitted_ip = clean_ip(ip)
        application_move(
            application,
            ApplicationState.SUBMITTED,
            actor=user,
            public_message=(
                "You resubmitted your application." if resubmission else "Application received."
            ),
            extra_fields=["submitted_at", "last_submitted_at", "email", "submitted_ip"],
        )
        # A resubmission is a new text: first approvals given to the old one do not count.
        decisions_void_first_approvals(application, actor=user)
        _sync_decisions(application, actor=user)
        _keep_cards_seen(application, at=now)
        audit_record(
            actor=user,
            action="application.resubmitted" if resubmission else "application.submitted",
            target=application_target(application),
            data={"sizes": [v.slug for v in application.requested_variants.all()]},
            ip=ip,
        )
        flags = _flags(application)
        automatic = [
            d
            for d in application.decisions.select_related("variant")
            if d.outcome == SizeOutcome.PENDING
            and d.variant.access_policy == AccessPolicy.AUTOMATIC
        ]
        if automatic and flags:
            size_event(
                application,
                actor=None,
                internal_note="Not approved automatically; flags: " + ", ".join(flags),
            )
        elif automatic:
            for decision in automatic:
                approve_size(
                    application,
                    decision,
                    actor=None,
                    ends_at=None,
                    message="Approved automatically.",
                    note="",
                )
        settled = settle(application, actor=None)
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
        application = application_lock(application)
        require_owner(application, user)
        application_check_move(application, ApplicationState.WITHDRAWN)
        application_move(
            application,
            ApplicationState.WITHDRAWN,
            actor=user,
            public_message=message or "You withdrew the application.",
        )
        now = timezone.now()
        for decision in application.decisions.select_for_update().select_related("variant"):
            if decision.is_undecided:
                decision.decided_at = now
                decision_move(decision, SizeOutcome.WITHDRAWN, fields=["decided_at"])
        # Never an active grant under a withdrawn application: what it already granted ends
        # with it (the applicant asked for that; a reviewer is not needed to take it back).
        revoked = []
        for grant in application.grants.filter(status=GrantStatus.ACTIVE).select_related("variant"):
            grant_revoke(
                grant=grant,
                actor=user,
                reason="The application it was granted on was withdrawn by its author.",
                by_owner=True,
            )
            revoked.append(grant.variant.slug)
        audit_record(
            actor=user,
            action="application.withdrawn",
            target=application_target(application),
            data={"revoked_grants": revoked} if revoked else None,
        )
    return application
