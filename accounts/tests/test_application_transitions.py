"""Every allowed and forbidden move of an application, through the services only."""

from __future__ import annotations

import pytest

from accounts import services
from accounts.models import TRANSITIONS, ApplicationEvent, ApplicationState
from accounts.tests.factories import ReviewerFactory, UserFactory, application_fill
from catalog.models import ModelVariant

S = ApplicationState


def _seven():
    return ModelVariant.objects.get(slug="7b")


def build(state: str):
    """An application for 7B (one reviewer) in `state`, reached through the services."""
    user = UserFactory(first_name="Ann", last_name="Lee")
    reviewer = ReviewerFactory()
    if state == S.DRAFT:
        return application_fill(user, "7b", submit=False)
    if state == S.WITHDRAWN:
        app = application_fill(user, "7b", submit=False)
        return services.application_withdraw(application=app, user=user)
    app = application_fill(user, "7b")
    if state == S.RETURNED:
        app = services.application_return(application=app, reviewer=reviewer, message="Fix it.")
    elif state == S.APPROVED:
        services.application_approve(application=app, reviewer=reviewer, variants=[_seven()])
    elif state == S.REJECTED:
        services.application_reject(application=app, reviewer=reviewer, reason="Not research.")
    app.refresh_from_db()
    assert app.state == state
    return app


def move(app, to_state: str):
    reviewer = ReviewerFactory()
    if to_state == S.SUBMITTED:
        return services.application_submit(application=app, user=app.user)
    if to_state == S.RETURNED:
        return services.application_return(application=app, reviewer=reviewer, message="Fix.")
    if to_state == S.APPROVED:
        return services.application_approve(application=app, reviewer=reviewer, variants=[_seven()])
    if to_state == S.REJECTED:
        return services.application_reject(application=app, reviewer=reviewer, reason="No.")
    if to_state == S.WITHDRAWN:
        return services.application_withdraw(application=app, user=app.user)
    raise AssertionError(to_state)


PAIRS = [(a, b) for a in S.values for b in S.values if b != S.DRAFT]


def test_nothing_moves_back_to_draft():
    assert all(S.DRAFT not in targets for targets in TRANSITIONS.values())


@pytest.mark.django_db
@pytest.mark.parametrize(("from_state", "to_state"), PAIRS)
def test_each_move_is_allowed_exactly_when_the_table_says(from_state, to_state):
    app = build(from_state)
    events_before = ApplicationEvent.objects.filter(application=app).count()
    if to_state in TRANSITIONS[from_state]:
        move(app, to_state)
        app.refresh_from_db()
        assert app.state == to_state
        last = app.events.order_by("-id").first()
        assert (last.from_state, last.to_state) == (from_state, to_state)
    else:
        with pytest.raises(services.InvalidTransition) as excinfo:
            move(app, to_state)
        assert excinfo.value.status_code == 409
        assert excinfo.value.message  # says what is wrong
        app.refresh_from_db()
        assert app.state == from_state
        assert ApplicationEvent.objects.filter(application=app).count() == events_before


@pytest.mark.django_db
def test_an_invalid_move_says_what_the_state_is_and_what_it_could_become():
    app = build(S.APPROVED)
    with pytest.raises(services.InvalidTransition) as excinfo:
        services.application_withdraw(application=app, user=app.user)
    assert "approved" in excinfo.value.message
    assert "final" in excinfo.value.message


@pytest.mark.django_db
def test_the_applicant_only_touches_their_own_application(outsider):
    app = build(S.SUBMITTED)
    from core.errors import NotFound

    with pytest.raises(NotFound):
        services.application_withdraw(application=app, user=outsider)
    app.refresh_from_db()
    assert app.state == S.SUBMITTED
