"""Every way a database-only attacker can rewrite the audit log is found (issue 12, item 4).

Each tampering below runs with the database owner's rights (the append-only trigger
bypassed) and without AUDIT_KEYS; `verify_audit` must name it, with the S3 anchor where the
attack is on the chain's end.
"""

from __future__ import annotations

import json
import logging

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.utils import DatabaseError

from accounts import services
from accounts.audit import Anchor, chain_check_database
from accounts.models import AuditEntry
from accounts.tests.factories import UserFactory
from accounts.tests.test_audit import as_database_owner

pytestmark = pytest.mark.django_db


def entries(actor, n: int = 4) -> list[AuditEntry]:
    return [
        services.audit_record(actor=actor, action=f"t.{i}", target=f"t:{i}", data={"i": i})
        for i in range(n)
    ]


def last() -> AuditEntry:
    return AuditEntry.objects.order_by("-seq").first()


def verify(*args: str) -> str:
    """verify_audit's verdict: 'ok' or its error message."""
    try:
        call_command("verify_audit", *args)
    except CommandError as exc:
        return str(exc)
    return "ok"


# --- the tamperings ---------------------------------------------------------------------


def edit_last_and_rehash_unkeyed(cursor):
    entry = last()
    entry.target = "grant:0"
    forged = entry.compute_hash(None)  # the project's own function, without the key
    cursor.execute(
        "UPDATE accounts_auditentry SET target = %s, hash = %s WHERE id = %s",
        [entry.target, forged, entry.pk],
    )


def edit_last_and_rehash_with_a_guessed_key(cursor):
    entry = last()
    entry.data = {"i": 0}
    forged = entry.compute_hash(b"a key the attacker guessed")
    cursor.execute(
        "UPDATE accounts_auditentry SET data = %s, hash = %s WHERE id = %s",
        [json.dumps(entry.data), forged, entry.pk],
    )


def change_an_actor(cursor):
    other = UserFactory()
    cursor.execute("UPDATE accounts_auditentry SET actor_id = %s WHERE seq = 2", [other.pk])


def change_an_actor_ref(cursor):
    cursor.execute("UPDATE accounts_auditentry SET actor_ref = '1:someone@else' WHERE seq = 2")


def delete_the_last_rows(cursor):
    cursor.execute(
        "DELETE FROM accounts_auditentry WHERE seq > (SELECT max(seq) - 2 FROM accounts_auditentry)"
    )


def delete_a_middle_row_and_renumber(cursor):
    cursor.execute("DELETE FROM accounts_auditentry WHERE seq = 2")
    # Through a high range: seq is unique at every row, not at the end of the statement.
    cursor.execute("UPDATE accounts_auditentry SET seq = seq + 1000000 WHERE seq > 2")
    cursor.execute("UPDATE accounts_auditentry SET seq = seq - 1000001 WHERE seq > 1000000")


def append_a_forged_legacy_entry(cursor):
    head = last()
    forged = AuditEntry(
        seq=head.seq + 1,
        created_at=head.created_at,
        actor_ref="",
        action="grant.created",
        target="grant:1",
        data={},
        key_id="",
        prev_hash=head.hash,
    )
    forged.hash = forged.compute_hash(None)
    cursor.execute(
        "INSERT INTO accounts_auditentry (seq, created_at, actor_ref, action, target, data, ip, "
        "key_id, prev_hash, hash) VALUES (%s, %s, '', %s, %s, '{}', NULL, '', %s, %s)",
        [
            forged.seq,
            forged.created_at,
            forged.action,
            forged.target,
            forged.prev_hash,
            forged.hash,
        ],
    )


def rechain_the_tail_after_an_edit(cursor):
    """Edit entry 3, then recompute it and everything after with the project's functions."""
    rows = list(AuditEntry.objects.filter(seq__gte=3).order_by("seq"))
    previous = AuditEntry.objects.get(seq=2).hash
    for entry in rows:
        if entry.seq == 3:
            entry.action = "nothing.happened"
        entry.prev_hash = previous
        entry.key_id = ""
        entry.hash = entry.compute_hash(None)
        cursor.execute(
            "UPDATE accounts_auditentry SET action = %s, prev_hash = %s, key_id = '', hash = %s "
            "WHERE id = %s",
            [entry.action, entry.prev_hash, entry.hash, entry.pk],
        )
        previous = entry.hash


TAMPERINGS = [
    edit_last_and_rehash_unkeyed,
    edit_last_and_rehash_with_a_guessed_key,
    change_an_actor,
    change_an_actor_ref,
    delete_the_last_rows,
    delete_a_middle_row_and_renumber,
    append_a_forged_legacy_entry,
    rechain_the_tail_after_an_edit,
]


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=lambda f: f.__name__)
def test_verify_audit_finds_every_tampering(s3, outsider, tamper):
    entries(outsider)
    call_command("audit_anchor")
    assert verify() == "ok"

    with as_database_owner() as cursor:
        tamper(cursor)

    verdict = verify()
    assert verdict != "ok"
    assert "Audit chain" in verdict


def test_a_cut_tail_is_found_only_with_the_anchor(s3, outsider):
    """Without the anchor the shortened chain is self-consistent: that is why it exists."""
    entries(outsider)
    call_command("audit_anchor")
    with as_database_owner() as cursor:
        delete_the_last_rows(cursor)
    assert verify("--no-anchor") == "ok"
    assert "removed from its end" in verify()


def test_an_anchor_from_the_log_can_stand_in_for_s3(s3, outsider, tmp_path, caplog):
    entries(outsider)
    with caplog.at_level(logging.INFO, logger="portal.audit"):
        call_command("audit_anchor")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("audit anchor"))
    saved = tmp_path / "anchor.json"
    saved.write_text(line.removeprefix("audit anchor "))
    assert verify("--anchor-file", str(saved)) == "ok"
    with as_database_owner() as cursor:
        delete_the_last_rows(cursor)
    assert "removed from its end" in verify("--anchor-file", str(saved))


def test_a_forged_anchor_is_refused(s3, outsider, tmp_path):
    entries(outsider)
    head = last()
    fake = Anchor(seq=head.seq, hash=head.hash, at="2026-01-01T00:00:00+00:00", key_id="x", mac="0")
    (tmp_path / "a.json").write_bytes(fake.to_json())
    assert "signature" in verify("--anchor-file", str(tmp_path / "a.json"))


def test_verify_audit_says_what_to_do_without_an_anchor(s3, outsider, settings):
    settings.AUDIT_ANCHOR_OBJECT = "audit/none-yet.json"
    entries(outsider)
    assert "manage.py audit_anchor" in verify()


def test_every_append_leaves_the_head_in_the_log(
    outsider, caplog, django_capture_on_commit_callbacks
):
    with (
        caplog.at_level(logging.INFO, logger="portal.audit"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        entry = services.audit_record(actor=outsider, action="t.logged", target="t:1")
    assert f"audit append seq={entry.seq} hash={entry.hash}" in caplog.text


def test_keys_rotate_and_old_entries_still_verify(outsider, settings):
    settings.AUDIT_KEYS = ["k1:" + "a" * 32]
    entries(outsider, 2)
    settings.AUDIT_KEYS = ["k2:" + "b" * 32, "k1:" + "a" * 32]
    entries(outsider, 2)
    assert [e.key_id for e in AuditEntry.objects.order_by("seq")][-4:] == ["k1", "k1", "k2", "k2"]
    assert chain_check_database().ok

    settings.AUDIT_KEYS = ["k2:" + "b" * 32]  # the old key dropped too early
    report = chain_check_database()
    assert not report.ok
    assert "'k1'" in report.why


def test_the_application_role_cannot_update_or_delete_audit_rows(outsider):
    assert connection.vendor == "postgresql"  # the suite's database; the trigger is its
    (entry, *_) = entries(outsider, 1)
    for sql in (
        "UPDATE accounts_auditentry SET target = 'x' WHERE id = %s",
        "DELETE FROM accounts_auditentry WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [entry.pk])
    entry.refresh_from_db()
    assert entry.target == "t:0"


def test_deleting_a_user_keeps_their_entries_verifiable():
    user = UserFactory()
    user_id = user.pk
    entries(user, 2)
    user.delete()  # the actor link becomes NULL; actor_ref keeps who it was
    kept = AuditEntry.objects.filter(actor_ref__startswith=f"{user_id}:")
    assert kept.count() == 2
    assert not kept.filter(actor__isnull=False).exists()
    assert chain_check_database().ok
