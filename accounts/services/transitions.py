"""The moves of the three state machines (applications, size decisions, grants), each
checked against its one table in `accounts.models`, with the event row each move leaves.

Every service that changes an application's state, a size's outcome or a grant's status
goes through `application_move`, `decision_move` or `grant_move` here.
"""

from __future__ import annotations

from collections.abc import Iterable

from accounts.models import (
    GRANT_TRANSITIONS,
    SIZE_TRANSITIONS,
    TRANSITIONS,
    Application,
    ApplicationEvent,
    ApplicationState,
    Grant,
    SizeDecision,
    SizeOutcome,
)
from accounts.selectors import user_is_reviewer
from accounts.services.audit import actor_ref, audit_record
from catalog.models import ModelVariant
from core.errors import Conflict, NotFound, PermissionDenied


class InvalidTransition(Conflict):
    """A state change the transition table does not allow."""

    code = "invalid_transition"


def application_check_move(application: Application, to_state: str) -> None:
    if to_state not in TRANSITIONS[application.state]:
        current = ApplicationState(application.state).label.lower()
        allowed = sorted(TRANSITIONS[application.state])
        allowed_text = ", ".join(allowed) if allowed else "nothing: it is final"
        raise InvalidTransition(
            f"This application is {current}; it cannot become {to_state}. "
            f"From {application.state} it can become: {allowed_text}.",
            extra={"state": application.state, "requested": to_state},
        )


def application_lock(application: Application) -> Application:
    """Lock the row and refresh the caller's instance, so it sees the change it asked for."""
    application.refresh_from_db(from_queryset=Application.objects.select_for_update())
    return application


def application_event(
    application: Application,
    *,
    actor,
    from_state: str,
    to_state: str,
    public_message: str = "",
    internal_note: str = "",
    variant: ModelVariant | None = None,
) -> ApplicationEvent:
    user, _ = actor_ref(actor)
    return ApplicationEvent.objects.create(
        application=application,
        actor=user,
        from_state=from_state,
        to_state=to_state,
        variant=variant,
        public_message=public_message,
        internal_note=internal_note,
    )


def size_event(
    application: Application,
    *,
    actor,
    variant: ModelVariant | None = None,
    public_message: str = "",
    internal_note: str = "",
) -> ApplicationEvent:
    """An event about one size (or the whole application) that leaves its state as it is."""
    return application_event(
        application,
        actor=actor,
        from_state=application.state,
        to_state=application.state,
        variant=variant,
        public_message=public_message,
        internal_note=internal_note,
    )


def application_move(
    application: Application,
    to_state: str,
    *,
    actor,
    public_message: str = "",
    internal_note: str = "",
    extra_fields: Iterable[str] = (),
) -> ApplicationEvent:
    application_check_move(application, to_state)
    from_state = application.state
    application.state = to_state
    application.save(update_fields=["state", "updated_at", *extra_fields])
    return application_event(
        application,
        actor=actor,
        from_state=from_state,
        to_state=to_state,
        public_message=public_message,
        internal_note=internal_note,
    )


def require_owner(application: Application, user) -> None:
    if user is None or application.user_id != getattr(user, "pk", None):
        raise NotFound("There is no such application on your account.")


def require_reviewer(reviewer, application: Application) -> None:
    if not user_is_reviewer(reviewer):
        raise PermissionDenied("Only members of the reviewers group can decide applications.")
    if reviewer.pk == application.user_id:
        raise PermissionDenied("Reviewers cannot decide their own application.")


def application_target(application: Application) -> str:
    return f"application:{application.pk}"


def decision_move(decision: SizeDecision, to_outcome: str, *, fields: Iterable[str] = ()) -> None:
    """Change one size's outcome if `SIZE_TRANSITIONS` allows it (the caller holds the
    application's lock and writes the event and audit rows that say why)."""
    if to_outcome not in SIZE_TRANSITIONS[decision.outcome]:
        current = SizeOutcome(decision.outcome).label.lower()
        raise InvalidTransition(
            f"{decision.variant} is {current}; it cannot become {to_outcome}.",
            extra={"outcome": decision.outcome, "requested": to_outcome},
        )
    decision.outcome = to_outcome
    decision.save(update_fields=["outcome", *fields])


def grant_move(grant: Grant, to_status: str, *, actor, fields: Iterable[str] = ()) -> None:
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
