"""The hash-chained audit log: appends link, edits and removals are found.

The attacker of these tests can write to the database as its owner (triggers bypassed, as a
superuser can); they do not hold AUDIT_KEYS and cannot write to S3."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from django.contrib.auth import authenticate
from django.db import connection, transaction

from accounts import services
from accounts.models import AUDIT_GENESIS, AuditEntry
from accounts.selectors import audit_first_broken

pytestmark = pytest.mark.django_db


@contextmanager
def as_database_owner():
    """Write as someone who can bypass the append-only trigger (PostgreSQL's
    session_replication_role needs a superuser), as an attacker with database access would."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = replica")
        yield cursor


def three_entries(actor):
    return [
        services.audit_record(actor=actor, action=f"test.{i}", target=f"t:{i}", data={"i": i})
        for i in range(3)
    ]


def test_entries_link_to_the_previous_one(outsider):
    entries = three_entries(outsider)
    assert entries[1].prev_hash == entries[0].hash
    assert entries[2].prev_hash == entries[1].hash
    first = AuditEntry.objects.order_by("id").first()
    assert first.prev_hash == AUDIT_GENESIS
    assert audit_first_broken() is None


def test_an_edited_entry_is_named(outsider):
    entries = three_entries(outsider)
    with as_database_owner():
        AuditEntry.objects.filter(pk=entries[1].pk).update(data={"i": 99})
    broken, why = audit_first_broken()
    assert broken.pk == entries[1].pk
    assert "edited" in why


def test_a_removed_entry_breaks_the_link_of_the_next(outsider):
    entries = three_entries(outsider)
    with as_database_owner() as cursor:
        cursor.execute("DELETE FROM accounts_auditentry WHERE id = %s", [entries[1].pk])
    broken, why = audit_first_broken()
    assert broken.pk == entries[2].pk
    assert "removed" in why


def test_entries_cannot_be_changed_through_the_model(outsider):
    (entry, *_) = three_entries(outsider)
    entry.action = "something.else"
    with pytest.raises(ValueError):
        entry.save()
    with pytest.raises(ValueError):
        entry.delete()


def test_the_domain_writes_audit_entries(researcher, revoked_researcher):
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {
        "application.submitted",
        "size.approved",
        "grant.created",
        "license.accepted",
        "grant.revoked",
        "application.approved",
    } <= actions
    assert audit_first_broken() is None


def test_a_failed_login_is_recorded(researcher, rf):
    request = rf.post("/accounts/login/", REMOTE_ADDR="203.0.113.7")
    assert authenticate(request, email=researcher.email, password="wrong password!") is None
    entry = AuditEntry.objects.filter(action="login.failed").last()
    assert entry.target == f"email:{researcher.email}"
    assert entry.ip == "203.0.113.7"
    assert "wrong password" not in str(entry.data)
