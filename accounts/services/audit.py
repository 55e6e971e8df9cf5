"""The hash-chained audit log: one append function every service calls, and the anchor
that copies the chain's head outside the database (see `accounts.audit`)."""

from __future__ import annotations

import ipaddress
import json
import logging

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from accounts.audit import Anchor, audit_keys
from accounts.models import AUDIT_GENESIS, AuditEntry, User
from core import storage

logger = logging.getLogger("portal.audit")

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
        last = AuditEntry.objects.order_by("-seq").values_list("seq", "hash").first()
        key_id, keys = audit_keys()
        entry = AuditEntry(
            seq=(last[0] + 1) if last else 1,
            created_at=timezone.now(),
            actor=user,
            actor_ref=ref,
            action=action,
            target=str(target)[:300],
            data=clean,
            ip=clean_ip(ip),
            key_id=key_id,
            prev_hash=last[1] if last else AUDIT_GENESIS,
        )
        entry.hash = entry.compute_hash(keys[key_id])
        entry.save()
        # Every committed append leaves the chain's head in the log, outside the database.
        transaction.on_commit(
            lambda: logger.info(
                "audit append seq=%d hash=%s action=%s", entry.seq, entry.hash, entry.action
            )
        )
    return entry


def audit_anchor_write() -> Anchor:
    """Write the chain's head, signed, to the S3 anchor object and to the log.

    Raises `ServiceUnavailable` when S3 cannot be reached (the periodic task runs again)."""
    head = AuditEntry.objects.order_by("-seq").values_list("seq", "hash").first()
    seq, hash_ = head if head else (0, AUDIT_GENESIS)
    anchor = Anchor.make(seq=seq, hash_=hash_, at=timezone.now())
    try:
        storage.object_put(settings.AUDIT_ANCHOR_OBJECT, anchor.to_json())
    except storage.S3Error as exc:
        raise storage.unavailable(exc) from exc
    logger.info("audit anchor %s", anchor.to_json().decode())
    return anchor


def audit_anchor_read() -> Anchor | None:
    """The anchor last written to S3, or None when there is none yet."""
    try:
        raw = storage.object_get(settings.AUDIT_ANCHOR_OBJECT)
    except storage.S3Error as exc:
        raise storage.unavailable(exc) from exc
    return Anchor.from_json(raw) if raw is not None else None
