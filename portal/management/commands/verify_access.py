"""Report every grant in force that nothing justifies, and every use of the weights that no
grant and accepted license covered: for operators after an incident or a migration.

It sits at the top layer because uses are recorded by two features (downloads in `weights`,
generation jobs in `inference`); the rule for grants is `accounts.selectors.grant_problems`.
"""

from __future__ import annotations

from datetime import datetime

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Grant, GrantStatus, LicenseAcceptance
from accounts.selectors import grants_unjustified, license_current_version, license_for_variant
from catalog.models import ModelVariant
from inference.models import GenerationJob
from weights.models import DownloadEvent


def use_problem(*, user_id: int, variant: ModelVariant, at: datetime) -> str | None:
    """Why a use at `at` was not covered, or None: a grant in force then, and the license
    version in force then accepted before it."""
    covered = (
        Grant.objects.filter(user_id=user_id, variant=variant, starts_at__lte=at, ends_at__gt=at)
        .exclude(status=GrantStatus.REVOKED, revoked_at__lte=at)
        .exists()
    )
    if not covered:
        return "no grant was in force"
    license = license_for_variant(variant)
    version = license_current_version(license, at=at) if license else None
    if (
        version is not None
        and not LicenseAcceptance.objects.filter(
            user_id=user_id, version=version, accepted_at__lte=at
        ).exists()
    ):
        return f"license version {version.version} was not accepted yet"
    return None


class Command(BaseCommand):
    help = (
        "Check every active grant against the rule that justifies it, and every recorded "
        "download and generation job against the grant and license in force; exits 1 if any "
        "fails."
    )

    def handle(self, *args, **options) -> None:
        failures: list[str] = []
        for grant, problems in grants_unjustified():
            failures.append(
                f"grant #{grant.pk} ({grant.user.email}, {grant.variant}): " + "; ".join(problems)
            )
        downloads = DownloadEvent.objects.select_related("file__variant", "user")
        for event in downloads.iterator(chunk_size=1000):
            why = use_problem(
                user_id=event.user_id, variant=event.file.variant, at=event.created_at
            )
            if why:
                failures.append(
                    f"download #{event.pk} ({event.user.email}, {event.file}, "
                    f"{event.created_at:%Y-%m-%d %H:%M}): {why}"
                )
        jobs = GenerationJob.objects.filter(owner__isnull=False).select_related("variant", "owner")
        for job in jobs.iterator(chunk_size=1000):
            why = use_problem(user_id=job.owner_id, variant=job.variant, at=job.created_at)
            if why:
                failures.append(
                    f"job {job.pk} ({job.owner.email}, {job.variant}, "
                    f"{job.created_at:%Y-%m-%d %H:%M}): {why}"
                )
        for line in failures:
            self.stdout.write(line)
        if failures:
            raise CommandError(f"{len(failures)} grant(s) or use(s) are not justified (above).")
        self.stdout.write(self.style.SUCCESS("Every grant in force and every use is justified."))
