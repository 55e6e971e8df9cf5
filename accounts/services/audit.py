"""The hash-chained audit log: one append function every service calls."""

from __future__ import annotations

import ipaddress
import json

from django.db import connection, transaction
from django.utils import timezone

from accounts.models import AUDIT_GENESIS, AuditEntry, User

# Any constant works; it only has to be the same for every process that appends.
_AUDIT_LOCK_KEY = 0x6C6C6170  # "llap"


def clean_ip(ip: str | None) -> str | None:
    if not ip:
        return None
    try:
        return str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        return None


def actor_ref(actor) -> tuple[User | None, str]:
    if actor is None or not getattr(actor, "is_authenticated", False):
        return None, ""
    return actor, f"{actor.pk}:{actor.email}"


def audit_record(
    *,
    actor,
    action: str,
    target: str = "",
    data: dict | None = None,
    ip: str | None = None,
) -> AuditEntry:
    """Append one entry to the hash-chained audit log."""
    # Normalise the data as the JSON column will return it, so the hash verifies later.
    clean = json.loads(json.dumps(data or {}, default=str, sort_keys=True))
    user, ref = actor_ref(actor)
    with transaction.atomic():
        # Appends are serialised: two concurrent entries must not both link to one parent.
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_AUDIT_LOCK_KEY])
        last = AuditEntry.objects.order_by("-id").values_list("hash", flat=True).first()
        entry = AuditEntry(
            created_at=timezone.now(),
            actor=user,
            actor_ref=ref,
            action=action,
            target=str(target)[:300],
            data=clean,
            ip=clean_ip(ip),
            prev_hash=last or AUDIT_GENESIS,
        )
        entry.hash = entry.compute_hash()
        entry.save()
    return entry
