"""The audit log's keyed chain: a sequence number and the signing key's id on every entry,
and on PostgreSQL a trigger that refuses UPDATE and DELETE of audit rows.

Existing entries get their sequence number from their order and keep their plain SHA-256
hashes (an empty key_id); entries written from now on are keyed (`accounts.audit`).
"""

from django.db import connection, migrations, models

TRIGGER = """
CREATE OR REPLACE FUNCTION accounts_auditentry_append_only() RETURNS trigger AS $$
BEGIN
    -- Deleting a user account sets actor_id to NULL (ON DELETE SET NULL); actor_ref, which
    -- the hash covers, keeps who it was. That is the one change allowed.
    IF TG_OP = 'UPDATE' AND NEW.actor_id IS NULL
       AND (NEW.id, NEW.seq, NEW.created_at, NEW.actor_ref, NEW.action, NEW.target, NEW.data,
            NEW.ip, NEW.key_id, NEW.prev_hash, NEW.hash)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.seq, OLD.created_at, OLD.actor_ref, OLD.action, OLD.target, OLD.data,
            OLD.ip, OLD.key_id, OLD.prev_hash, OLD.hash) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit entries are append-only: % of entry % refused', TG_OP, OLD.id
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS accounts_auditentry_append_only ON accounts_auditentry;
CREATE TRIGGER accounts_auditentry_append_only
    BEFORE UPDATE OR DELETE ON accounts_auditentry
    FOR EACH ROW EXECUTE FUNCTION accounts_auditentry_append_only();
"""
DROP_TRIGGER = """
DROP TRIGGER IF EXISTS accounts_auditentry_append_only ON accounts_auditentry;
DROP FUNCTION IF EXISTS accounts_auditentry_append_only();
"""


def number_entries(apps, schema_editor):
    AuditEntry = apps.get_model("accounts", "AuditEntry")
    for seq, pk in enumerate(AuditEntry.objects.order_by("id").values_list("pk", flat=True), 1):
        AuditEntry.objects.filter(pk=pk).update(seq=seq)


def _execute_on_postgresql(schema_editor, sql: str) -> None:
    # schema_editor is None when the test harness re-runs data migrations after a flush;
    # the statements are idempotent, so running them again is harmless.
    conn = schema_editor.connection if schema_editor is not None else connection
    if conn.vendor == "postgresql":
        with conn.cursor() as cursor:
            cursor.execute(sql)


def trigger_forwards(apps, schema_editor):
    _execute_on_postgresql(schema_editor, TRIGGER)


def trigger_backwards(apps, schema_editor):
    _execute_on_postgresql(schema_editor, DROP_TRIGGER)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0005_licenses_moved")]

    operations = [
        migrations.AddField(
            model_name="auditentry",
            name="seq",
            field=models.PositiveBigIntegerField(null=True),
        ),
        migrations.RunPython(number_entries, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="auditentry",
            name="seq",
            field=models.PositiveBigIntegerField(
                unique=True, help_text="Position in the chain, from 1"
            ),
        ),
        migrations.AddField(
            model_name="auditentry",
            name="key_id",
            field=models.CharField(
                blank=True,
                default="",
                help_text="Which AUDIT_KEYS key signed it (empty: legacy)",
                max_length=64,
            ),
            preserve_default=False,
        ),
        migrations.AlterModelOptions(
            name="auditentry",
            options={"ordering": ["seq"], "verbose_name_plural": "audit entries"},
        ),
        migrations.RunPython(trigger_forwards, trigger_backwards),
    ]
