"""Every write of the weights app: publishing checkpoints, issuing and using download links."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Grant
from accounts.selectors import (
    access_check,
    access_require,
    access_require_published,
    allowed_grant_sql,
)
from catalog.models import ModelVariant, WeightFile
from core import rows, storage
from core.errors import InvalidInput, NotFound, PermissionDenied, ServiceUnavailable
from weights.checkpoints import LocalFile, checkpoint_inspect
from weights.models import DownloadEvent, DownloadLink

logger = logging.getLogger(__name__)

# --- Publishing ---------------------------------------------------------------------------


def s3_prefix(variant: ModelVariant) -> str:
    return f"checkpoints/{variant.slug}/"


class ChecklistMismatch(InvalidInput):
    code = "checklist_mismatch"


@dataclass
class PublishResult:
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    aborted_uploads: int = 0


# (path, size, action) -> a callable that takes byte counts, or None. action: "hash" | "upload"
ProgressFactory = Callable[[str, int, str], Callable[[int], None] | None]


def variant_publish(
    *,
    variant: ModelVariant,
    directory: Path,
    progress: ProgressFactory | None = None,
    part_size: int | None = None,
) -> PublishResult:
    """Upload a checkpoint folder to S3 and record its manifest, resumably.

    A file whose manifest row has the same size and SHA-256 as the local file, and whose
    object is in S3 with that size, is skipped. A row is written only after the file's
    upload completed and its checklist MD5 (when listed) matched.
    """
    checkpoint = checkpoint_inspect(directory=directory, variant=variant)
    result = PublishResult()
    try:
        # Uploads a killed publish left open hold parts nobody will complete.
        result.aborted_uploads = storage.multipart_uploads_abort(prefix=s3_prefix(variant))
        for local in checkpoint.files:
            if _already_stored(variant=variant, local=local, progress=progress):
                result.skipped.append(local.path)
                continue
            weightfile_upload(variant=variant, local=local, progress=progress, part_size=part_size)
            result.uploaded.append(local.path)
    except storage.S3Error as exc:
        raise storage.unavailable(exc) from exc
    if variant.params != checkpoint.params and variant.slug == "demo":
        # The demo's shape is whatever its builder chose; the catalog follows the checkpoint.
        variant.params = checkpoint.params
        variant.save(update_fields=["params", "updated_at"])
    return result


def _already_stored(*, variant: ModelVariant, local: LocalFile, progress) -> bool:
    row = WeightFile.objects.filter(variant=variant, path=local.path).first()
    if row is None or row.size != local.size:
        return False
    sha256, md5 = storage.file_digests(local.source, on_progress=_tick(progress, local, "hash"))
    _check_digests(local, sha256, md5)
    return row.sha256 == sha256 and storage.object_exists(row.s3_key, size=row.size)


def _tick(progress: ProgressFactory | None, local: LocalFile, action: str):
    return progress(local.path, local.size, action) if progress else None


def _check_digests(local: LocalFile, sha256: str, md5: str) -> None:
    """Compare with checklist.chk, whose digests are MD5 (the release's) or SHA-256."""
    expected = local.expected_digest
    if not expected:
        return
    name, actual = ("SHA-256", sha256) if len(expected) == 64 else ("MD5", md5)
    if actual != expected:
        raise ChecklistMismatch(
            f"{local.path}: {name} {actual} does not match checklist.chk ({expected}). "
            "The file is damaged or the checklist is stale; nothing was stored for it."
        )


def weightfile_upload(
    *,
    variant: ModelVariant,
    local: LocalFile,
    progress: ProgressFactory | None = None,
    part_size: int | None = None,
) -> WeightFile:
    key = s3_prefix(variant) + local.path
    # An old row stays until the new object is complete: S3 swaps the object in one step
    # when the multipart upload completes, and an interrupted upload leaves the old file
    # (and its row, download links and download history) as they were.
    stored = storage.upload_file(
        local.source,
        key=key,
        part_size=part_size,
        on_progress=_tick(progress, local, "upload"),
        verify=lambda sha256, md5: _check_digests(local, sha256, md5),
    )
    file, _ = WeightFile.objects.update_or_create(
        variant=variant,
        path=local.path,
        defaults={
            "size": stored.size,
            "sha256": stored.sha256,
            "md5": stored.md5,
            "s3_key": stored.key,
            "uploaded_at": timezone.now(),
        },
    )
    return file


# --- Download links -----------------------------------------------------------------------


def _new_link_id() -> str:
    return secrets.token_urlsafe(32)  # 256 bits: unguessable, and it grants nothing alone


def download_link_create(*, user, file: WeightFile) -> DownloadLink:
    now = timezone.now()
    return DownloadLink.objects.create(
        id=_new_link_id(),
        user=user,
        file=file,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.WEIGHTS_LINK_SECONDS),
        max_uses=settings.WEIGHTS_LINK_MAX_USES,
    )


def download_links_issue(*, user, variant: ModelVariant) -> list[DownloadLink]:
    """A usable link for each file of `variant`: the user's live ones, new ones where the
    last one expired, was revoked or is used up. Access is checked first."""
    access_require(user=user, variant=variant, purpose="download")
    return _links_issue(user=user, variant=variant)


def download_links_for_slug(*, user, slug: str) -> tuple[ModelVariant, list[DownloadLink]]:
    """`download_links_issue` for the published size `slug` (404 otherwise), as the links API
    asks for it: the size, the access decision (`accounts.selectors.allowed_grant_sql`), its
    files and the user's live links in ONE query. A file row is joined only where the grant
    is found: nothing of the size's files is read for a refused request, which then takes
    `access_require_published` for its reason."""
    now, found = timezone.now(), []
    if user is not None and user.is_authenticated and user.is_active:
        found = _size_files_and_live_links(user=user, slug=slug, now=now)
    width = len(ModelVariant._meta.concrete_fields)
    if not found or found[0][width] is None:
        # Anonymous, inactive, unknown, unpublished or refused: the two-step path says which,
        # and why (or, if the state changed in between, issues the links).
        variant, _grant = access_require_published(user=user, slug=slug, purpose="download")
        return variant, _links_issue(user=user, variant=variant)
    variant = rows.build(ModelVariant, found[0])
    start, link_start = width + 1, width + 1 + len(WeightFile._meta.concrete_fields)
    files_and_live = [
        (rows.build(WeightFile, row, start), rows.build(DownloadLink, row, link_start))
        for row in found
        if row[start] is not None  # a size without files: one row, its file columns NULL
    ]
    return variant, _links_from(user=user, files_and_live=files_and_live, now=now)


def _size_files_and_live_links(*, user, slug: str, now) -> list[tuple]:
    """The links statement: per file of the published size `slug`, the size's columns, the
    id of the grant `allowed_grant_sql` finds (NULL: refused), the file's and its live
    link's; one row with NULL file columns where the grant is missing or there are no
    files, none where no such size is published."""
    grant_sql, grant_params = allowed_grant_sql(user=user, now=now)
    live_sql, live_params = _live_link_sql(user=user, now=now)
    sizes, files = ModelVariant._meta.db_table, WeightFile._meta.db_table
    sql = f"""
        SELECT {rows.columns(ModelVariant, "m")}, g.id,
          {rows.columns(WeightFile, "f")}, {rows.columns(DownloadLink, "l")}
        FROM {sizes} m
        LEFT JOIN {Grant._meta.db_table} g ON g.id = {grant_sql}
        LEFT JOIN {files} f ON f.variant_id = m.id AND g.id IS NOT NULL
        LEFT JOIN {DownloadLink._meta.db_table} l ON l.id = {live_sql}
        WHERE m.slug = %s AND m.is_published = %s
        ORDER BY f.path
    """  # noqa: S608 - table names from the models; every value is a parameter
    return rows.fetch(sql, [*grant_params, *live_params, slug.lower(), True])


def _links_issue(*, user, variant: ModelVariant) -> list[DownloadLink]:
    now = timezone.now()
    return _links_from(
        user=user,
        files_and_live=_files_with_live_link(user=user, variant=variant, now=now),
        now=now,
    )


def _links_from(*, user, files_and_live: list[tuple], now) -> list[DownloadLink]:
    """Each file's live link, or a new one where it has none (written in one INSERT)."""
    missing = [
        DownloadLink(
            id=_new_link_id(),
            user=user,
            file=file,
            created_at=now,
            expires_at=now + timedelta(seconds=settings.WEIGHTS_LINK_SECONDS),
            max_uses=settings.WEIGHTS_LINK_MAX_USES,
        )
        for file, live in files_and_live
        if live is None
    ]
    DownloadLink.objects.bulk_create(missing)
    new = iter(missing)
    links = []
    for file, live in files_and_live:
        link = live if live is not None else next(new)
        link.file = file
        links.append(link)
    return links


def _live_link_sql(*, user, now) -> tuple[str, list]:
    """The id of the user's newest link to the file aliased `f` that is usable for at least
    another minute (NULL where there is none), as a correlated subquery, and its parameters."""
    sql = f"""(
            SELECT n.id FROM {DownloadLink._meta.db_table} n
            WHERE n.file_id = f.id AND n.user_id = %s AND n.revoked_at IS NULL
              AND n.expires_at > %s AND n.use_count < n.max_uses
            ORDER BY n.created_at DESC, n.id DESC
            LIMIT 1
        )"""  # noqa: S608 - the table name from the model; every value is a parameter
    at = connection.ops.adapt_datetimefield_value(now + timedelta(minutes=1))
    return sql, [user.pk, at]


def _files_with_live_link(*, user, variant: ModelVariant, now) -> list[tuple]:
    """Each file of `variant` in path order, with the user's newest link to it that is usable
    for at least another minute (None where there is none), in one query."""
    live_sql, live_params = _live_link_sql(user=user, now=now)
    sql = f"""
        SELECT {rows.columns(WeightFile, "f")}, {rows.columns(DownloadLink, "l")}
        FROM {WeightFile._meta.db_table} f
        LEFT JOIN {DownloadLink._meta.db_table} l ON l.id = {live_sql}
        WHERE f.variant_id = %s
        ORDER BY f.path
    """  # noqa: S608 - table names from the models; every value is a parameter
    width = len(WeightFile._meta.concrete_fields)
    return [
        (rows.build(WeightFile, row), rows.build(DownloadLink, row, width))
        for row in rows.fetch(sql, [*live_params, variant.pk])
    ]


def download_link_revoke(*, link: DownloadLink) -> None:
    DownloadLink.objects.filter(id=link.id, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


@dataclass(frozen=True)
class Redirect:
    url: str  # a presigned S3 URL: never log it
    event: DownloadEvent


def download_link_use(*, link_id: str, user, ip: str | None, user_agent: str) -> Redirect:
    """Check everything again and return a freshly signed S3 URL for the link's file.

    A DownloadEvent is written only when the URL is handed out; every refusal raises a
    PortalError that says why and what to do, and writes nothing.
    """
    if user is None or not user.is_authenticated:
        raise PermissionDenied(
            "Sign in to the portal (or send your API token with the 'download' scope) to use "
            "this download link.",
            code="anonymous",
        )
    link = (
        DownloadLink.objects.select_related("file__variant").filter(id=link_id, user=user).first()
    )
    if link is None:
        # Someone else's link looks exactly like a link that does not exist.
        raise NotFound(
            "This download link does not exist. Get fresh links from the model's page.",
            code="unknown_link",
        )
    page = link.file.variant.get_absolute_url()
    now = timezone.now()
    if link.revoked_at is not None:
        raise PermissionDenied(
            f"This download link was revoked. Get fresh links from {page}.", code="link_revoked"
        )
    if link.expires_at <= now:
        raise PermissionDenied(
            f"This download link expired at {link.expires_at:%Y-%m-%d %H:%M} UTC. Get fresh "
            f"links from {page}, or let download.sh or portal-client fetch them with your "
            "API token.",
            code="link_expired",
        )
    if link.use_count >= link.max_uses:
        raise PermissionDenied(
            f"This download link has been used {link.use_count} times, its limit. Get a fresh "
            f"link from {page}.",
            code="link_used_up",
        )
    decision = access_check(user=user, variant=link.file.variant, purpose="download")
    if not decision.allowed:
        raise PermissionDenied(decision.message, code=decision.code)

    try:
        stored_size = storage.object_readable_size(link.file.s3_key)
    except storage.S3Error as exc:
        logger.warning("S3 cannot serve %s: %s", link.file, type(exc).__name__)
        raise storage.unavailable(exc) from exc
    if stored_size != link.file.size:
        logger.error("%s is in the manifest but not in S3 as recorded", link.file)
        raise ServiceUnavailable(
            f"{link.file.path} is missing from the file store. The portal team has been "
            "told; please try again later.",
            code="file_missing",
        )
    url = storage.presigned_get_url(link.file.s3_key, filename=link.file.filename)

    with transaction.atomic():
        # Conditional increment: two requests racing for the last use cannot both pass.
        counted = DownloadLink.objects.filter(
            id=link.id, use_count__lt=F("max_uses"), revoked_at__isnull=True
        ).update(use_count=F("use_count") + 1)
        if not counted:
            raise PermissionDenied(
                f"This download link has reached its use limit. Get a fresh link from {page}.",
                code="link_used_up",
            )
        event = DownloadEvent.objects.create(
            user=user, file=link.file, link=link, ip=ip, user_agent=user_agent[:512]
        )
    return Redirect(url=url, event=event)
