"""Check the audit log: every entry's keyed hash, link, sequence number and actor, and the
chain's head against the anchor written outside the database."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.audit import Anchor, chain_check_database
from accounts.services.audit import audit_anchor_read
from core.errors import ServiceUnavailable


class Command(BaseCommand):
    help = (
        "Verify the audit log's hash chain and compare its head with the anchor in S3; exits 1 "
        "and names the first broken entry, or says how the chain and the anchor disagree."
    )

    def add_arguments(self, parser) -> None:
        source = parser.add_mutually_exclusive_group()
        source.add_argument(
            "--anchor-file",
            type=Path,
            help="compare with this anchor (JSON, as in S3 or an 'audit anchor' log line) "
            "instead of the S3 object",
        )
        source.add_argument(
            "--no-anchor",
            action="store_true",
            help="check the entries only (a cut tail then goes unnoticed)",
        )

    def handle(self, *args, anchor_file: Path | None, no_anchor: bool, **options) -> None:
        anchor = None
        if anchor_file is not None:
            try:
                anchor = Anchor.from_json(anchor_file.read_bytes())
            except (OSError, ValueError) as exc:
                raise CommandError(f"{anchor_file}: {exc}") from None
        elif not no_anchor:
            try:
                anchor = audit_anchor_read()
            except ServiceUnavailable as exc:
                raise CommandError(
                    f"Could not read the anchor ({exc.message}). Retry when S3 answers, or give "
                    "--anchor-file with one from the log, or --no-anchor."
                ) from None
            if anchor is None:
                raise CommandError(
                    f"No anchor at s3://{settings.S3_BUCKET}/{settings.AUDIT_ANCHOR_OBJECT} yet: "
                    "run `manage.py audit_anchor` (beat does every AUDIT_ANCHOR_SECONDS), or "
                    "check the entries only with --no-anchor."
                )
        report = chain_check_database(anchor)
        if report.broken is not None:
            entry = report.broken
            raise CommandError(
                f"Audit chain broken at entry #{entry.pk} (number {entry.seq}, {entry.action} "
                f"{entry.target}, {entry.created_at:%Y-%m-%d %H:%M:%S} UTC): {report.why}."
            )
        if not report.ok:
            raise CommandError(f"Audit chain does not match its anchor: {report.why}.")
        against = f", head matches the anchor of {anchor.at}" if anchor else " (no anchor checked)"
        self.stdout.write(
            self.style.SUCCESS(f"Audit chain verified: {report.entries} entries intact{against}.")
        )
