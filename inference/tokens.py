"""Counting prompt tokens in the web process, without torch.

The web process validates "prompt too long for the context" before a job is queued. It
loads the size's `tokenizer.model` with SentencePiece alone (no torch, no engine import),
fetched from S3 into JOBS_MODEL_CACHE_DIR/web-tokenizers/ and SHA-256 verified against the
WeightFile manifest on first use; a few hundred KB, then cached in memory.

When the tokenizer cannot be had (the size is not stored yet, S3 is down), the count is an
upper bound: LLaMA's tokenizer uses byte fallback, so a prompt never takes more tokens than
its UTF-8 bytes, plus BOS and the dummy-prefix space. A job that passes only the estimate
but does not fit fails cleanly on the worker, with the same message and limit.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from catalog.models import ModelVariant, WeightFile
from core import rows, storage

logger = logging.getLogger(__name__)

TOKENIZER_PATH = "tokenizer.model"


@dataclass(frozen=True)
class TokenCount:
    count: int
    exact: bool


@functools.lru_cache(maxsize=8)
def _processor(path: str, sha256: str):
    # The web process loads SentencePiece's C library only when a tokenizer is asked for.
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor()
    processor.Load(path)
    return processor


def _tokenizer_row(variant: ModelVariant) -> tuple[str, str, int] | None:
    # Plain SQL: every job submission reads it, and the ORM took longer to compile it than
    # the database to answer.
    found = rows.fetch(
        f"SELECT s3_key, sha256, size FROM {WeightFile._meta.db_table} "  # noqa: S608
        "WHERE variant_id = %s AND path = %s",
        [variant.pk, TOKENIZER_PATH],
    )
    return tuple(found[0]) if found else None


def _tokenizer_fetch(variant: ModelVariant, row: tuple[str, str, int]) -> Path | None:
    s3_key, sha256, size = row
    # Beside, not inside, the workers' checkpoint folders: a worker on the same host fills
    # those under a lock the web must not wait on.
    dest = Path(settings.JOBS_MODEL_CACHE_DIR) / "web-tokenizers" / variant.slug / TOKENIZER_PATH
    try:
        storage.download_file(s3_key, dest, sha256=sha256, size=size)
    except (*storage.S3Error, storage.ChecksumMismatch, OSError) as exc:
        logger.warning("tokenizer of %s unavailable, estimating prompt tokens: %s", variant, exc)
        return None
    return dest


def tokenizer_file(variant: ModelVariant) -> Path | None:
    """The size's `tokenizer.model`, fetched and SHA-256 verified on first use; None when it
    cannot be had (not stored yet, S3 down)."""
    row = _tokenizer_row(variant)
    return None if row is None else _tokenizer_fetch(variant, row)


# variant id -> (its tokenizer's manifest row, the processor loaded from that file). A
# submission reads the row (one query) and uses the processor it already holds while the
# row is the same: no lock, no re-hash of the file per request. A republished tokenizer
# (another key, digest or size) is fetched and verified again.
_loaded: dict[int, tuple[tuple[str, str, int], object]] = {}


def _tokenizer_for(variant: ModelVariant):
    row = _tokenizer_row(variant)
    if row is None:
        return None
    held = _loaded.get(variant.pk)
    if held is not None and held[0] == row:
        return held[1]
    path = _tokenizer_fetch(variant, row)
    if path is None:
        return None
    processor = _processor(str(path), row[1])
    _loaded[variant.pk] = (row, processor)
    return processor


def tokenizer_get(variant: ModelVariant):
    """The size's SentencePiece processor (no torch), or None when it cannot be had."""
    return _tokenizer_for(variant)


def prompt_token_counts(variant: ModelVariant, prompts: list[str]) -> list[TokenCount]:
    """Tokens of each prompt as the model sees it (with BOS)."""
    processor = _tokenizer_for(variant)
    if processor is None:
        return [TokenCount(len(p.encode("utf-8")) + 2, exact=False) for p in prompts]
    return [TokenCount(len(processor.encode(p)) + 1, exact=True) for p in prompts]
