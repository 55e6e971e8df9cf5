"""The original LLaMA release layout, read without torch: file names, `params.json`,
`checklist.chk`, where `tokenizer.model` is. The one place these rules are written.

A checkpoint directory holds `params.json`, `consolidated.00.pth` ... `consolidated.NN.pth`
(one per model-parallel rank: 7B 1, 13B 2, 33B 4, 65B 8), `checklist.chk` (`md5sum -c`
format: MD5 in the original release; SHA-1, SHA-256 and SHA-512 digests are told apart by
their length) and usually `tokenizer.model` (the original release kept it one level up,
beside the size folders; both places are searched).

The engine (`checkpoint.py`) and the portal's publisher (`weights/checkpoints.py`) both read
checkpoints through this module; the web process imports it, so it must never import torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

PARAMS = "params.json"
CHECKLIST = "checklist.chk"
TOKENIZER = "tokenizer.model"
SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")

# Digest length in hex digits -> hashlib algorithm.
DIGEST_ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_CHECKLIST_LINE = re.compile(r"^([0-9a-fA-F]+) [ *](.+)$")


class CheckpointError(Exception):
    """A checkpoint cannot be used as it is; the message says which file and why."""


class MissingFileError(CheckpointError):
    pass


class MissingShardError(MissingFileError):
    pass


class ShapeMismatchError(CheckpointError):
    pass


class VocabSizeError(CheckpointError):
    pass


class ChecksumError(CheckpointError):
    pass


def shard_name(index: int) -> str:
    return f"consolidated.{index:02d}.pth"


def shard_ranks(directory: str | Path) -> list[int]:
    """The ranks of the `consolidated.NN.pth` files present, sorted."""
    return sorted(
        int(m.group(1)) for p in Path(directory).iterdir() if (m := SHARD_RE.match(p.name))
    )


def digest_algorithm(digest: str) -> str:
    """The hash algorithm of a hex digest, from its length."""
    try:
        return DIGEST_ALGORITHMS[len(digest)]
    except KeyError:
        raise CheckpointError(
            f"cannot tell the hash algorithm of digest {digest[:20]!r} ({len(digest)} hex "
            "digits; MD5 has 32, SHA-1 40, SHA-256 64, SHA-512 128)"
        ) from None


def checklist_parse(text: str, *, source: str = CHECKLIST) -> dict[str, str]:
    """`md5sum`-style lines ("<hex>  <name>" or "<hex> *<name>") as {name: lowercase hex}.

    Raises CheckpointError naming the line that is not one, or whose digest has a length no
    known algorithm has."""
    sums: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        match = _CHECKLIST_LINE.match(line)
        if not match or len(match.group(1)) not in DIGEST_ALGORITHMS:
            raise CheckpointError(
                f"{source} line {number} is not '<md5 or sha256>  <file name>': {line[:80]!r}"
            )
        sums[match.group(2).strip().removeprefix("./")] = match.group(1).lower()
    return sums


def checklist_read(path: str | Path) -> dict[str, str]:
    path = Path(path)
    return checklist_parse(path.read_text(errors="replace"), source=str(path))


def checklist_render(rows: list[tuple[str, str]]) -> str:
    """`md5sum -c` input for (digest, path) rows."""
    return "".join(f"{digest}  {path}\n" for digest, path in rows)


def find_tokenizer(ckpt_dir: str | Path) -> Path | None:
    """`tokenizer.model` in the checkpoint folder or, as in the original release, beside it."""
    ckpt_dir = Path(ckpt_dir)
    for candidate in (ckpt_dir / TOKENIZER, ckpt_dir.parent / TOKENIZER):
        if candidate.is_file():
            return candidate
    return None


def read_params(ckpt_dir: str | Path) -> dict[str, Any]:
    """`params.json` as a dict with at least integer dim, n_layers and n_heads."""
    path = Path(ckpt_dir) / PARAMS
    if not path.is_file():
        raise MissingFileError(f"{path} not found: not a LLaMA checkpoint directory")
    try:
        params = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    wrong = [k for k in ("dim", "n_layers", "n_heads") if not isinstance(params.get(k), int)]
    if wrong:
        raise CheckpointError(f"{path} must give integer {', '.join(wrong)}")
    return params
