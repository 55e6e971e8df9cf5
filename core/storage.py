"""The one module that talks to S3. Nothing else in the portal imports boto3.

The client is built on first use from settings (never at import time) and cached; tests
that point the portal at another S3 server call `reset_client()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from core.errors import ServiceUnavailable

S3Error = (BotoCoreError, ClientError)
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's floor for every part but the last
MAX_PARTS = 10_000


@functools.lru_cache(maxsize=1)
def _client_for(
    endpoint: str, key_id: str, secret: str, region: str, style: str, ct: float, rt: float
):
    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name=region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": style},
            connect_timeout=ct,
            read_timeout=rt,
            retries={"max_attempts": 2, "mode": "standard"},
        ),
    )


def client() -> Any:
    return _client_for(
        settings.S3_ENDPOINT_URL,
        settings.S3_ACCESS_KEY_ID,
        settings.S3_SECRET_ACCESS_KEY,
        settings.S3_REGION,
        settings.S3_ADDRESSING_STYLE,
        settings.S3_CONNECT_TIMEOUT,
        settings.S3_READ_TIMEOUT,
    )


def reset_client() -> None:
    _client_for.cache_clear()


def bucket() -> str:
    return settings.S3_BUCKET


def ping() -> None:
    """Raise if the S3 server or the bucket cannot be reached with our credentials."""
    client().head_bucket(Bucket=bucket())


def ensure_bucket(*, wait: float = 0) -> None:
    """Create the bucket if it is missing. With `wait`, keep trying for that many seconds
    while S3 fails: a SeaweedFS just started answers before the filer behind it takes writes."""
    deadline = time.monotonic() + wait
    while True:
        try:
            _ensure_bucket_once()
            return
        except S3Error:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _ensure_bucket_once() -> None:
    try:
        client().head_bucket(Bucket=bucket())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
        client().create_bucket(Bucket=bucket())


def unavailable(exc: Exception) -> ServiceUnavailable:
    """The error a caller raises when S3 fails: a message a person can act on, no internals."""
    return ServiceUnavailable(
        "The file store is unreachable right now. Nothing was recorded; please try again in a "
        "few minutes.",
        code="storage_unavailable",
    )


# --- Streaming upload -------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str
    md5: str


class UploadAborted(Exception):
    """The multipart upload was aborted; nothing is stored under the key."""


def upload_file(
    path: Path,
    *,
    key: str,
    part_size: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    verify: Callable[[str, str], None] | None = None,
    content_type: str = "application/octet-stream",
) -> StoredObject:
    """Stream a local file to S3 as a multipart upload and return its size and digests.

    Memory stays at about one part: the file is read into one reused buffer, part by part,
    and SHA-256 and MD5 are updated from the same buffer (S3's own multipart checksum is a
    checksum of part checksums, not the file's). Any failure or interrupt (KeyboardInterrupt
    included) aborts the upload, so S3 never shows a partial object under `key`.
    `verify(sha256, md5)` runs before the upload is completed; if it raises, the upload is
    aborted too, so a file that fails its checklist never becomes an object.
    """
    part_size = part_size or settings.WEIGHTS_UPLOAD_PART_SIZE
    if part_size < MIN_PART_SIZE:
        raise ValueError(f"S3 parts must be at least {MIN_PART_SIZE} bytes")
    # S3 takes at most 10,000 parts: a file too big for the part size gets bigger parts.
    needed = -(-os.stat(path).st_size // MAX_PARTS)
    part_size = max(part_size, -(-needed // MIN_PART_SIZE) * MIN_PART_SIZE)
    s3 = client()
    sha256, md5 = hashlib.sha256(), hashlib.md5()  # noqa: S324 - checklist.chk compatibility
    buffer = bytearray(part_size)
    view = memoryview(buffer)
    total = 0
    upload_id = None
    try:
        upload_id = s3.create_multipart_upload(Bucket=bucket(), Key=key, ContentType=content_type)[
            "UploadId"
        ]
        parts = []
        with open(path, "rb") as handle:
            number = 1
            while True:
                filled = _read_full(handle, view)
                if filled == 0 and number > 1:
                    break
                chunk = view[:filled]
                sha256.update(chunk)
                md5.update(chunk)
                # A full part goes as the buffer itself (no copy); botocore is done with it
                # when upload_part returns. Only a short last part is copied out.
                response = s3.upload_part(
                    Bucket=bucket(),
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=buffer if filled == part_size else bytes(chunk),
                )
                parts.append({"PartNumber": number, "ETag": response["ETag"]})
                total += filled
                if on_progress:
                    on_progress(filled)
                number += 1
                if filled < part_size:
                    break
        if verify:
            verify(sha256.hexdigest(), md5.hexdigest())
        s3.complete_multipart_upload(
            Bucket=bucket(), Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        _abort_uploads(key, upload_id)
        raise
    return StoredObject(key=key, size=total, sha256=sha256.hexdigest(), md5=md5.hexdigest())


def _abort_uploads(key: str, upload_id: str | None) -> None:
    """Abort our upload, and any other open one for `key` (an interrupt can land before the
    create call returned its id)."""
    s3 = client()
    with contextlib.suppress(*S3Error):
        if upload_id:
            s3.abort_multipart_upload(Bucket=bucket(), Key=key, UploadId=upload_id)
        for upload in s3.list_multipart_uploads(Bucket=bucket(), Prefix=key).get("Uploads", []):
            if upload["Key"] == key:
                s3.abort_multipart_upload(Bucket=bucket(), Key=key, UploadId=upload["UploadId"])


def _read_full(handle, view: memoryview) -> int:
    """Fill `view` from `handle` (short reads happen on pipes and network filesystems)."""
    filled = 0
    while filled < len(view):
        count = handle.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled


def multipart_uploads_abort(*, prefix: str) -> int:
    """Abort multipart uploads left under `prefix` by a killed publish; return how many."""
    s3 = client()
    aborted = 0
    response = s3.list_multipart_uploads(Bucket=bucket(), Prefix=prefix)
    for upload in response.get("Uploads", []):
        s3.abort_multipart_upload(Bucket=bucket(), Key=upload["Key"], UploadId=upload["UploadId"])
        aborted += 1
    return aborted


def multipart_uploads_list(*, prefix: str) -> list[str]:
    response = client().list_multipart_uploads(Bucket=bucket(), Prefix=prefix)
    return [upload["Key"] for upload in response.get("Uploads", [])]


# --- Reading ------------------------------------------------------------------------------


def _is_missing(exc: ClientError) -> bool:
    """S3's ways of saying there is no such object (codes differ between servers)."""
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def object_head(key: str) -> dict | None:
    """The object's metadata (`ContentLength`, `ETag`, ...), or None when there is none.

    Raises an `S3Error` when the server cannot be reached.
    """
    try:
        return client().head_object(Bucket=bucket(), Key=key)
    except ClientError as exc:
        if _is_missing(exc):
            return None
        raise


def object_readable_size(key: str) -> int | None:
    """The object's size as read back with a one-byte ranged GET, or None when there is no
    such object. Unlike HEAD (answered from metadata), this fails with `S3Error` whenever the
    store cannot serve the bytes themselves, so a download is not sent to a broken store."""
    try:
        response = client().get_object(Bucket=bucket(), Key=key, Range="bytes=0-0")
    except ClientError as exc:
        if _is_missing(exc):
            return None
        raise
    with contextlib.closing(response["Body"]):
        response["Body"].read()
    content_range = response.get("ContentRange", "")  # "bytes 0-0/<size>"
    if "/" in content_range:
        return int(content_range.rsplit("/", 1)[1])
    return int(response["ContentLength"])


def object_exists(key: str, *, size: int | None = None) -> bool:
    head = object_head(key)
    return head is not None and (size is None or head["ContentLength"] == size)


def object_put(key: str, body: bytes, *, content_type: str = "application/json") -> None:
    """Store a small object in one request (records such as the audit log's anchor)."""
    client().put_object(Bucket=bucket(), Key=key, Body=body, ContentType=content_type)


def object_get(key: str) -> bytes | None:
    """A small object's bytes, or None when there is none. Raises `S3Error` when the server
    cannot be reached."""
    try:
        return client().get_object(Bucket=bucket(), Key=key)["Body"].read()
    except ClientError as exc:
        if _is_missing(exc):
            return None
        raise


def object_delete(key: str) -> None:
    client().delete_object(Bucket=bucket(), Key=key)


def presigned_get_url(key: str, *, filename: str, expires_in: int | None = None) -> str:
    """A GET URL for `key`, signed for `expires_in` seconds (settings: minutes), that makes
    the browser save the file as `filename` instead of showing it.

    Signing is local: this never contacts S3. Never log what it returns.
    """
    expires_in = expires_in or settings.WEIGHTS_PRESIGN_SECONDS
    safe_name = filename.replace('"', "").replace("\\", "")
    return client().generate_presigned_url(
        "get_object",
        Params={
            "Bucket": bucket(),
            "Key": key,
            "ResponseContentDisposition": f'attachment; filename="{safe_name}"',
            "ResponseContentType": "application/octet-stream",
        },
        ExpiresIn=expires_in,
    )


class ChecksumMismatch(Exception):
    """A downloaded file's SHA-256 differs from the manifest's; the file was removed."""


def download_file(
    key: str,
    dest: Path,
    *,
    sha256: str,
    size: int,
    block_size: int = 8 * 1024 * 1024,
    on_progress: Callable[[int], None] | None = None,
) -> Path:
    """Fetch `key` to `dest` with ranged reads, resuming a `dest.part` left by a previous try,
    and verify its SHA-256 before it appears under its final name.

    The job worker fills its model cache with this. A present `dest` with the right size and
    digest is kept as it is.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Two processes filling the same cache take turns: the second finds the file done.
    with open(dest.with_name(dest.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _download_locked(key, dest, sha256, size, block_size, on_progress)


def _download_locked(key, dest: Path, sha256: str, size: int, block_size: int, on_progress):
    if dest.exists() and dest.stat().st_size == size and file_digests(dest)[0] == sha256:
        return dest
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    offset = 0
    if partial.exists():
        offset = partial.stat().st_size
        if offset > size:
            partial.unlink()
            offset = 0
        else:
            with open(partial, "rb") as handle:
                for block in iter(lambda: handle.read(block_size), b""):
                    digest.update(block)
    with open(partial, "ab") as out:
        while offset < size:
            end = min(offset + block_size * 8, size) - 1
            body = client().get_object(Bucket=bucket(), Key=key, Range=f"bytes={offset}-{end}")[
                "Body"
            ]
            for block in body.iter_chunks(block_size):
                out.write(block)
                digest.update(block)
                offset += len(block)
                if on_progress:
                    on_progress(len(block))
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{dest.name}: SHA-256 {digest.hexdigest()} does not match the manifest's {sha256}"
        )
    os.replace(partial, dest)
    return dest


def file_digests(
    path: Path,
    *,
    block_size: int = 8 * 1024 * 1024,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[str, str]:
    """(SHA-256, MD5) of a local file, read in blocks."""
    sha256, md5 = hashlib.sha256(), hashlib.md5()  # noqa: S324 - checklist.chk compatibility
    buffer = bytearray(block_size)
    view = memoryview(buffer)
    with open(path, "rb") as handle:
        while count := handle.readinto(view):
            sha256.update(view[:count])
            md5.update(view[:count])
            if on_progress:
                on_progress(count)
    return sha256.hexdigest(), md5.hexdigest()
