"""`manage.py verify_access`: every grant in force and every recorded use, checked against
the rule that justifies it (`accounts.selectors.grant_problems`)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts import services
from accounts.models import Grant, SizeDecision, SizeOutcome
from accounts.tests.factories import UserFactory, application_fill
from catalog.models import ModelVariant, WeightFile
from inference.models import GenerationJob
from weights.models import DownloadEvent

pytestmark = pytest.mark.django_db


def verdict() -> str:
    try:
        call_command("verify_access")
    except CommandError as exc:
        return str(exc)
    return "ok"


def test_the_cast_is_justified(researcher, revoked_researcher, applicant, capsys):
    assert verdict() == "ok"
    assert "Every grant in force and every use is justified" in capsys.readouterr().out


def test_a_grant_written_past_the_services_is_reported(capsys):
    user = UserFactory()
    app = application_fill(user, "7b")  # submitted, nobody decided
    Grant.objects.create(
        user=user,
        variant=ModelVariant.objects.get(slug="7b"),
        application=app,
        ends_at=timezone.now() + timedelta(days=30),
    )
    assert "not justified" in verdict()
    assert "no approved decision on LLaMA 7B" in capsys.readouterr().out


def test_an_approval_by_the_applicant_is_reported(reviewer, capsys):
    user = UserFactory()
    app = application_fill(user, "7b")
    services.application_approve(
        application=app, reviewer=reviewer, variants=[ModelVariant.objects.get(slug="7b")]
    )
    SizeDecision.objects.filter(application=app).update(decided_by=user)
    assert "not justified" in verdict()
    assert "the applicant decided it" in capsys.readouterr().out


def test_uses_without_the_license_accepted_are_reported(researcher, capsys):
    """The cast's researcher accepted the license; a use dated before that is not covered."""
    grant = Grant.objects.get(user=researcher, variant__slug="7b")
    acceptance = researcher.license_acceptances.get()
    accepted_at = grant.starts_at + timedelta(minutes=10)
    type(acceptance).objects.filter(pk=acceptance.pk).update(accepted_at=accepted_at)
    variant = ModelVariant.objects.get(slug="7b")
    file = WeightFile.objects.create(
        variant=variant,
        path="params.json",
        size=1,
        sha256="0" * 64,
        md5="0" * 32,
        s3_key="verify-access/params.json",
        uploaded_at=timezone.now(),
    )
    DownloadEvent.objects.create(user=researcher, file=file, created_at=accepted_at)
    assert verdict() == "ok"
    early = DownloadEvent.objects.create(
        user=researcher, file=file, created_at=accepted_at - timedelta(minutes=5)
    )
    GenerationJob.objects.create(
        owner=researcher,
        variant=variant,
        prompts=["x"],
        params={},
        created_at=grant.starts_at - timedelta(days=1),
    )
    assert "2 grant(s) or use(s)" in verdict()
    out = capsys.readouterr().out
    assert f"download #{early.pk}" in out
    assert "was not accepted yet" in out
    assert "no grant was in force" in out


def test_an_automatic_approval_after_a_revocation_is_reported(reviewer, capsys):
    user = UserFactory()
    application_fill(user, "demo")
    grant = Grant.objects.get(user=user)
    services.grant_revoke(grant=grant, actor=reviewer, reason="Shared the weights.")
    # As the old code did: re-apply and be approved automatically despite the revocation.
    again = application_fill(user, "demo")
    decision = again.decisions.get()
    assert decision.outcome == SizeOutcome.PENDING  # today: a person decides
    decision.outcome = SizeOutcome.APPROVED
    decision.decided_at = timezone.now()
    decision.save()
    Grant.objects.create(user=user, variant=grant.variant, application=again, ends_at=grant.ends_at)
    assert "not justified" in verdict()
    assert "approved automatically after a rejection or revocation" in capsys.readouterr().out
