"""Small fake checkpoints in the original release layout, for publish and download tests."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from catalog.models import ModelVariant


def write_checkpoint(
    directory: Path,
    variant: ModelVariant,
    *,
    shard_bytes: int = 64 * 1024,
    checklist: bool = True,
    seed: int = 0,
) -> Path:
    """params.json matching the catalog, `shard_count` shards of random bytes, a tokenizer
    and (optionally) a correct checklist.chk."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_text(json.dumps(variant.params))
    (directory / "tokenizer.model").write_bytes(os.urandom(1024) + bytes([seed]))
    for rank in range(variant.shard_count):
        (directory / f"consolidated.{rank:02d}.pth").write_bytes(os.urandom(shard_bytes))
    if checklist:
        lines = [
            f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n"  # noqa: S324
            for p in sorted(directory.iterdir())
            if p.name != "checklist.chk"
        ]
        (directory / "checklist.chk").write_text("".join(lines))
    return directory
