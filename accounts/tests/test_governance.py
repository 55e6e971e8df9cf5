"""The defects seen from outside (issue 12), each a sequence of steps that once ended in a
grant nobody justified."""

from __future__ import annotations

import pytest

from accounts import services
from accounts.models import ApplicationState, Grant, GrantStatus, SizeOutcome
from accounts.selectors import access_check
from accounts.tests.factories import UserFactory, application_fill, grant_access
from catalog.models import ModelVariant
from core.errors import Conflict, InvalidInput

pytestmark = pytest.mark.django_db


def v(slug: str) -> ModelVariant:
    return ModelVariant.objects.get(slug=slug)


def outcome(application, slug: str) -> str:
    return application.decisions.get(variant__slug=slug).outcome


def test_a_return_voids_a_first_approval_so_one_more_approval_grants_nothing(
    reviewer, second_reviewer
):
    user = UserFactory()
    app = application_fill(user, "33b")  # two reviewers
    services.application_approve(application=app, reviewer=reviewer, variants=[v("33b")])
    assert outcome(app, "33b") == SizeOutcome.AWAITING_SECOND

    services.application_return(application=app, reviewer=reviewer, message="Say more.")
    assert outcome(app, "33b") == SizeOutcome.PENDING
    services.application_save_draft(
        application=app, user=user, data={"affiliation": "Another place entirely"}
    )
    services.application_resubmit(application=app, user=user)

    grants = services.application_approve(
        application=app, reviewer=second_reviewer, variants=[v("33b")]
    )
    assert grants == []
    assert outcome(app, "33b") == SizeOutcome.AWAITING_SECOND  # a first approval again
    assert not Grant.objects.filter(user=user).exists()
    # Both approvals on the resubmitted text: now it counts.
    (grant,) = services.application_approve(application=app, reviewer=reviewer, variants=[v("33b")])
    assert grant.status == GrantStatus.ACTIVE


def test_a_size_unticked_after_a_first_approval_can_never_be_granted(reviewer, second_reviewer):
    user = UserFactory()
    app = application_fill(user, "33b", "7b")
    services.application_approve(application=app, reviewer=reviewer, variants=[v("33b")])
    services.application_return(application=app, reviewer=reviewer, message="Only 7B, please.")
    services.application_save_draft(application=app, user=user, data={}, variants=[v("7b")])
    services.application_resubmit(application=app, user=user)

    assert not app.decisions.filter(variant__slug="33b").exists()
    with pytest.raises(InvalidInput, match="did not request"):
        services.application_approve(application=app, reviewer=second_reviewer, variants=[v("33b")])
    assert not Grant.objects.filter(user=user, variant__slug="33b").exists()


def test_a_resubmission_without_a_return_step_still_voids_first_approvals(
    reviewer, second_reviewer
):
    """The resubmission itself voids, whatever path led to it."""
    user = UserFactory()
    app = application_fill(user, "65b")
    services.application_approve(application=app, reviewer=reviewer, variants=[v("65b")])
    services.application_return(application=app, reviewer=second_reviewer, message="Fix.")
    services.application_resubmit(application=app, user=user)
    assert outcome(app, "65b") == SizeOutcome.PENDING
    assert app.decisions.get(variant__slug="65b").first_approved_by is None


def test_a_revoked_researcher_reapplying_is_decided_by_a_person(reviewer):
    user = UserFactory()
    (grant,) = grant_access(user, "demo")  # automatic policy
    services.grant_revoke(grant=grant, actor=reviewer, reason="Shared the weights.")
    app = services.application_start(user=user)
    services.application_withdraw(application=app, user=user)

    again = application_fill(user, "demo")
    again.refresh_from_db()
    assert again.state == ApplicationState.SUBMITTED
    assert outcome(again, "demo") == SizeOutcome.PENDING
    assert not access_check(user=user, variant=v("demo"), purpose="download").allowed
    note = again.events.order_by("-id").first().internal_note
    assert "prior_refusal" in note


def test_a_rejected_history_sends_the_next_application_to_a_person(reviewer):
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import SizeDecision

    user = UserFactory()
    first = application_fill(user, "7b")
    services.application_reject(application=first, reviewer=reviewer, reason="No.")
    SizeDecision.objects.filter(application=first).update(
        decided_at=timezone.now() - timedelta(days=1000)  # long past the "recent" window
    )
    again = application_fill(user, "demo")
    again.refresh_from_db()
    assert again.state == ApplicationState.SUBMITTED
    assert outcome(again, "demo") == SizeOutcome.PENDING


def test_withdrawing_a_partly_approved_application_ends_its_grants(reviewer):
    user = UserFactory()
    app = application_fill(user, "7b", "13b")
    (grant,) = services.application_approve(application=app, reviewer=reviewer, variants=[v("7b")])
    assert access_check(user=user, variant=v("7b"), purpose="download").grant == grant

    services.application_withdraw(application=app, user=user)

    app.refresh_from_db()
    grant.refresh_from_db()
    assert app.state == ApplicationState.WITHDRAWN
    assert grant.status == GrantStatus.REVOKED
    assert "withdrawn" in grant.revoke_reason
    assert not access_check(user=user, variant=v("7b"), purpose="download").allowed
    assert outcome(app, "13b") == SizeOutcome.WITHDRAWN
    assert outcome(app, "7b") == SizeOutcome.APPROVED  # history stays as it was decided


def test_a_decided_size_cannot_move_again(reviewer):
    app = application_fill(UserFactory(), "7b", "13b")
    services.application_reject(application=app, reviewer=reviewer, variants=[v("7b")], reason="x")
    with pytest.raises(Conflict):
        services.application_approve(application=app, reviewer=reviewer, variants=[v("7b")])
    assert outcome(app, "7b") == SizeOutcome.REJECTED
