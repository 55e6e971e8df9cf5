"""The job worker's local copy of a size's published checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from catalog.models import ModelVariant
from catalog.selectors import variant_files
from core import storage
from core.errors import NotFound


def checkpoint_fetch(
    *, variant: ModelVariant, directory: Path, on_progress: Callable[[int], None] | None = None
) -> Path:
    """Make `directory` hold the variant's stored checkpoint, every file SHA-256 verified.

    Files already there and intact are kept; partial ones resume. Raises
    `storage.ChecksumMismatch` for a file that arrives damaged (it is removed).
    """
    files = variant_files(variant)
    if not files:
        raise NotFound(f"LLaMA {variant.size} has no published files yet.", code="not_stored")
    directory = Path(directory)
    for file in files:
        storage.download_file(
            file.s3_key,
            directory / file.path,
            sha256=file.sha256,
            size=file.size,
            on_progress=on_progress,
        )
    return directory
