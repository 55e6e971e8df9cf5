from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts import tasks
from accounts.demo import DEMO_PASSWORD, seed_demo_accounts
from accounts.models import Application, ApplicationState, AuditEntry, Grant, User
from accounts.selectors import access_check, user_is_reviewer
from accounts.tests.test_audit import as_database_owner
from catalog.models import ModelVariant

pytestmark = pytest.mark.django_db


def test_verify_audit_passes_on_an_intact_chain(researcher, capsys, s3):
    call_command("audit_anchor")
    call_command("verify_audit")
    assert "intact" in capsys.readouterr().out


def test_verify_audit_names_the_edited_entry(researcher):
    entry = AuditEntry.objects.order_by("id")[2]
    with as_database_owner():
        AuditEntry.objects.filter(pk=entry.pk).update(target="grant:999")
    with pytest.raises(CommandError) as excinfo:
        call_command("verify_audit", "--no-anchor")
    assert f"#{entry.pk}" in str(excinfo.value)
    assert "edited" in str(excinfo.value)


def test_the_periodic_tasks_are_scheduled():
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {
        "accounts.grants_expire",
        "accounts.grants_notify_expiring",
        "accounts.audit_anchor",
    } <= scheduled


def test_the_tasks_expire_and_notify(researcher, mailoutbox, django_capture_on_commit_callbacks):
    now = timezone.now()
    Grant.objects.filter(user=researcher, variant__slug="demo").update(ends_at=now - timedelta(1))
    Grant.objects.filter(user=researcher, variant__slug="7b").update(ends_at=now + timedelta(2))
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.grants_expire.apply().get() == 1
        assert tasks.grants_notify_expiring.apply().get() == 1
        assert tasks.grants_notify_expiring.apply().get() == 0
    assert [m.subject for m in mailoutbox] == ["[LLaMA access] Your access to LLaMA 7B ends soon"]


def test_demo_accounts_are_seeded_once(client):
    first = seed_demo_accounts()
    second = seed_demo_accounts()
    assert first == second
    assert {email for email, _ in first} == {
        "reviewer@example.org",
        "researcher@example.org",
        "admin@example.org",
    }
    researcher = User.objects.get(email="researcher@example.org")
    demo = ModelVariant.objects.get(slug="demo")
    assert access_check(user=researcher, variant=demo, purpose="generate").allowed
    assert Grant.objects.filter(user=researcher).count() == 1
    assert user_is_reviewer(User.objects.get(email="reviewer@example.org"))
    assert User.objects.get(email="admin@example.org").is_superuser
    waiting = Application.objects.filter(state=ApplicationState.SUBMITTED)
    assert waiting.count() == 3  # the reviewer's queue has work, once
    assert {a.user.email for a in waiting} >= {"alan.t.researcher@gmail.com"}
    response = client.post(
        "/accounts/login/", {"login": "researcher@example.org", "password": DEMO_PASSWORD}
    )
    assert response.status_code == 302
