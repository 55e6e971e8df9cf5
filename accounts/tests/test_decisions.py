"""Per-size decisions, the two-reviewer rule and automatic approval."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import flags, services
from accounts.models import ApplicationState, Grant, SizeOutcome
from accounts.tests.factories import UserFactory, application_fill
from catalog.models import ModelVariant
from core.errors import Conflict, InvalidInput, PermissionDenied

pytestmark = pytest.mark.django_db


def v(slug: str) -> ModelVariant:
    return ModelVariant.objects.get(slug=slug)


def outcomes(app) -> dict[str, str]:
    return {d.variant.slug: d.outcome for d in app.decisions.select_related("variant")}


def test_one_application_approves_some_sizes_and_rejects_another(reviewer):
    user = UserFactory()
    app = application_fill(user, "7b", "13b", "65b")
    ends = timezone.now() + timedelta(days=30)
    grants = services.application_approve(
        application=app, reviewer=reviewer, variants=[v("7b"), v("13b")], ends_at=ends
    )
    app.refresh_from_db()
    assert app.state == ApplicationState.SUBMITTED  # 65B still undecided
    assert {g.variant.slug for g in grants} == {"7b", "13b"}
    assert all(g.ends_at == ends and g.user == user for g in grants)

    services.application_reject(
        application=app, reviewer=reviewer, variants=[v("65b")], reason="65B needs a GPU cluster."
    )
    app.refresh_from_db()
    assert app.state == ApplicationState.APPROVED
    assert app.decided_at is not None
    assert outcomes(app) == {"7b": "approved", "13b": "approved", "65b": "rejected"}
    assert app.decisions.get(variant__slug="65b").reason == "65B needs a GPU cluster."
    assert not Grant.objects.filter(user=user, variant__slug="65b").exists()
    rejected_event = app.events.get(variant__slug="65b")
    assert "65B needs a GPU cluster." in rejected_event.public_message
    assert rejected_event.actor == reviewer


def test_a_grant_lasts_the_sizes_default_length(reviewer):
    seven = v("7b")
    seven.grant_days = 10
    seven.save()
    app = application_fill(UserFactory(), "7b")
    (grant,) = services.application_approve(application=app, reviewer=reviewer, variants=[seven])
    assert abs((grant.ends_at - grant.starts_at) - timedelta(days=10)) < timedelta(seconds=5)


def test_rejecting_every_size_rejects_the_application(reviewer):
    app = application_fill(UserFactory(), "7b", "13b")
    services.application_reject(application=app, reviewer=reviewer, reason="Commercial use.")
    app.refresh_from_db()
    assert app.state == ApplicationState.REJECTED
    assert set(outcomes(app).values()) == {"rejected"}


def test_two_reviewer_sizes_need_a_second_different_reviewer(reviewer, second_reviewer):
    app = application_fill(UserFactory(), "33b")
    assert (
        services.application_approve(application=app, reviewer=reviewer, variants=[v("33b")]) == []
    )
    app.refresh_from_db()
    assert outcomes(app) == {"33b": SizeOutcome.AWAITING_SECOND}
    assert app.state == ApplicationState.SUBMITTED
    assert not Grant.objects.filter(application=app).exists()

    with pytest.raises(Conflict) as excinfo:
        services.application_approve(application=app, reviewer=reviewer, variants=[v("33b")])
    assert excinfo.value.code == "second_reviewer_required"
    assert not Grant.objects.filter(application=app).exists()

    (grant,) = services.application_approve(
        application=app, reviewer=second_reviewer, variants=[v("33b")]
    )
    app.refresh_from_db()
    assert grant.variant.slug == "33b"
    assert app.state == ApplicationState.APPROVED
    decision = app.decisions.get()
    assert (decision.first_approved_by, decision.decided_by) == (reviewer, second_reviewer)


def test_a_second_reviewer_may_reject_after_a_first_approval(reviewer, second_reviewer):
    app = application_fill(UserFactory(), "33b")
    services.application_approve(application=app, reviewer=reviewer, variants=[v("33b")])
    services.application_reject(application=app, reviewer=second_reviewer, reason="Unclear use.")
    app.refresh_from_db()
    assert app.state == ApplicationState.REJECTED


def test_automatic_sizes_are_approved_on_submission():
    app = application_fill(UserFactory(), "demo")
    app.refresh_from_db()
    assert app.state == ApplicationState.APPROVED
    grant = Grant.objects.get(application=app)
    assert grant.variant.slug == "demo"
    assert app.events.filter(variant__slug="demo", actor__isnull=True).exists()


def test_a_flag_stops_automatic_approval(monkeypatch):
    # Submission asks the checks itself (no receiver needs to answer): any flag stops it.
    def flag(application):
        return flags.FlagResult(flags.FlagCode.WEBMAIL, "a webmail address")

    monkeypatch.setattr(flags, "CHECKS", (flag,))
    app = application_fill(UserFactory(), "demo")
    app.refresh_from_db()
    assert app.state == ApplicationState.SUBMITTED
    assert outcomes(app) == {"demo": "pending"}
    assert "webmail" in app.events.order_by("-id").first().internal_note


def test_mixed_automatic_and_manual_sizes(reviewer):
    app = application_fill(UserFactory(), "demo", "7b")
    app.refresh_from_db()
    assert app.state == ApplicationState.SUBMITTED
    assert outcomes(app) == {"demo": "approved", "7b": "pending"}


def test_only_reviewers_decide(outsider):
    app = application_fill(UserFactory(), "7b")
    with pytest.raises(PermissionDenied):
        services.application_approve(application=app, reviewer=outsider, variants=[v("7b")])
    with pytest.raises(PermissionDenied):
        services.application_reject(application=app, reviewer=outsider, reason="x")
    with pytest.raises(PermissionDenied):
        services.application_return(application=app, reviewer=outsider, message="x")
    assert outcomes(app) == {"7b": "pending"}


def test_a_reviewer_cannot_decide_their_own_application(reviewer):
    app = application_fill(reviewer, "7b")
    with pytest.raises(PermissionDenied):
        services.application_approve(application=app, reviewer=reviewer, variants=[v("7b")])


def test_decisions_need_a_requested_size_a_reason_and_a_future_end(reviewer):
    app = application_fill(UserFactory(), "7b")
    with pytest.raises(InvalidInput, match="did not request"):
        services.application_approve(application=app, reviewer=reviewer, variants=[v("65b")])
    with pytest.raises(InvalidInput):
        services.application_reject(application=app, reviewer=reviewer, reason="  ")
    with pytest.raises(InvalidInput):
        services.application_return(application=app, reviewer=reviewer, message="")
    with pytest.raises(InvalidInput):
        services.application_approve(
            application=app,
            reviewer=reviewer,
            variants=[v("7b")],
            ends_at=timezone.now() - timedelta(days=1),
        )
    assert outcomes(app) == {"7b": "pending"}


def test_a_decided_size_cannot_be_decided_again(reviewer):
    app = application_fill(UserFactory(), "7b", "13b")
    services.application_approve(application=app, reviewer=reviewer, variants=[v("7b")])
    with pytest.raises(Conflict, match="already decided"):
        services.application_reject(
            application=app, reviewer=reviewer, variants=[v("7b")], reason="x"
        )


def test_approval_of_a_size_already_granted_extends_the_grant(reviewer):
    user = UserFactory()
    app = application_fill(user, "7b")
    (first,) = services.application_approve(application=app, reviewer=reviewer, variants=[v("7b")])
    later = application_fill(user, "7b")
    ends = first.ends_at + timedelta(days=100)
    (second,) = services.application_approve(
        application=later, reviewer=reviewer, variants=[v("7b")], ends_at=ends
    )
    assert second.pk == first.pk
    assert Grant.objects.filter(user=user, variant__slug="7b").count() == 1
    second.refresh_from_db()
    assert second.ends_at == ends
