"""The audit log's keys, its anchor, and the check of the whole chain.

Threat model: someone who can read and write the database, and nothing else. They cannot
re-sign an edited entry (the HMAC keys come from the environment), cannot make a removed
entry's gap disappear (entries link to their predecessor and carry their sequence number),
and cannot cut the chain's tail and stop there: its head (sequence number and hash) is
written outside the database, to an S3 object and to the log, and `verify_audit` compares.
What the log does not protect: entries appended after the last anchor can be removed
unnoticed until the next one (the log line of each append still names them), and someone
holding the keys and S3 write access can rewrite everything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from accounts.models import AUDIT_GENESIS, AuditEntry

DERIVED_KEY_ID = "secret-key"


def audit_keys() -> tuple[str, dict[str, bytes]]:
    """(the id of the key that signs new entries, every key by id), from AUDIT_KEYS."""
    pairs = [item.strip() for item in settings.AUDIT_KEYS if item.strip()]
    if not pairs:
        derived = hmac.new(
            settings.SECRET_KEY.encode(), b"portal audit log key", hashlib.sha256
        ).digest()
        return DERIVED_KEY_ID, {DERIVED_KEY_ID: derived}
    keys: dict[str, bytes] = {}
    for pair in pairs:
        key_id, sep, secret = pair.partition(":")
        if not sep or not key_id or len(secret) < 16:
            raise ImproperlyConfigured(
                "AUDIT_KEYS holds 'id:secret' pairs with secrets of 16 characters or more "
                f"(the first signs new entries); {key_id or pair[:8]!r}... is not one."
            )
        keys[key_id] = secret.encode()
    return pairs[0].partition(":")[0], keys


@dataclass(frozen=True)
class Anchor:
    """The chain's head as written outside the database."""

    seq: int
    hash: str
    at: str
    key_id: str
    mac: str

    @staticmethod
    def _message(seq: int, hash_: str, at: str) -> bytes:
        return f"audit-anchor:{seq}:{hash_}:{at}".encode()

    @classmethod
    def make(cls, *, seq: int, hash_: str, at: datetime) -> Anchor:
        key_id, keys = audit_keys()
        stamp = at.isoformat()
        mac = hmac.new(keys[key_id], cls._message(seq, hash_, stamp), hashlib.sha256)
        return cls(seq=seq, hash=hash_, at=stamp, key_id=key_id, mac=mac.hexdigest())

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Anchor:
        try:
            data = json.loads(raw)
            return cls(
                seq=int(data["seq"]),
                hash=str(data["hash"]),
                at=str(data["at"]),
                key_id=str(data["key_id"]),
                mac=str(data["mac"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not an audit anchor: {exc}") from None

    def is_authentic(self) -> bool:
        key = audit_keys()[1].get(self.key_id)
        if key is None:
            return False
        expected = hmac.new(key, self._message(self.seq, self.hash, self.at), hashlib.sha256)
        return hmac.compare_digest(expected.hexdigest(), self.mac)


@dataclass(frozen=True)
class ChainReport:
    entries: int
    head_seq: int
    broken: AuditEntry | None = None
    why: str = ""

    @property
    def ok(self) -> bool:
        return not self.why


def _actor_consistent(entry: AuditEntry) -> bool:
    # actor_ref ("id:email" as it was) is hashed; the actor link may only point at that id
    # or, once the account is deleted, at nothing.
    return entry.actor_id is None or entry.actor_ref.startswith(f"{entry.actor_id}:")


def chain_check(entries: Iterable[AuditEntry], anchor: Anchor | None = None) -> ChainReport:
    """Walk the chain in sequence order; name the first entry that does not verify, or the
    anchor it contradicts."""
    _, keys = audit_keys()
    previous, expected_seq, seen_keyed = AUDIT_GENESIS, 1, False
    anchored_hash = None  # the hash of the entry whose number the anchor names
    for entry in entries:
        # Every entry before this one verified, so this is entry number `expected_seq`.

        def broken(why: str, entry=entry, count=expected_seq) -> ChainReport:
            return ChainReport(entries=count, head_seq=entry.seq, broken=entry, why=why)

        if entry.seq != expected_seq:
            return broken(
                f"it is number {entry.seq} where {expected_seq} was expected "
                "(entries before it were removed)"
            )
        if entry.prev_hash != previous:
            return broken("its link to the previous entry does not match (an entry was removed)")
        if entry.key_id:
            key = keys.get(entry.key_id)
            if key is None:
                return broken(
                    f"it was signed with key {entry.key_id!r}, which AUDIT_KEYS does not hold "
                    "(keep old keys after a rotation)"
                )
            seen_keyed = True
        elif seen_keyed:
            return broken("it carries no key although entries before it do (it was forged)")
        else:
            key = None
        if not hmac.compare_digest(entry.compute_hash(key), entry.hash):
            return broken("its content does not match its hash (the entry was edited)")
        if not _actor_consistent(entry):
            return broken("its actor was changed (the entry was edited)")
        if anchor is not None and entry.seq == anchor.seq:
            anchored_hash = entry.hash
        previous, expected_seq = entry.hash, expected_seq + 1
    head_seq = expected_seq - 1
    if anchor is not None:
        why = ""
        if not anchor.is_authentic():
            why = "the anchor's signature does not verify with AUDIT_KEYS"
        elif anchor.seq > head_seq:
            why = (
                f"the chain ends at number {head_seq} but its head was anchored at number "
                f"{anchor.seq} ({anchor.at}): entries were removed from its end"
            )
        elif anchor.seq > 0 and anchored_hash != anchor.hash:
            why = (
                f"entry number {anchor.seq} does not have the hash anchored on {anchor.at}: "
                "the chain was rewritten"
            )
        if why:
            return ChainReport(entries=head_seq, head_seq=head_seq, why=why)
    return ChainReport(entries=head_seq, head_seq=head_seq)


def chain_check_database(anchor: Anchor | None = None) -> ChainReport:
    return chain_check(AuditEntry.objects.order_by("seq").iterator(chunk_size=2000), anchor)
