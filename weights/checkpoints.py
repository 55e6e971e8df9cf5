"""The original LLaMA release layout, checked without loading anything.

`publish_weights` calls `checkpoint_inspect` before it uploads a byte: `params.json`,
`consolidated.NN.pth` with exactly the shard count the catalog gives the size,
`tokenizer.model` (in the folder or, as in the original release, one level up) and,
when present, `checklist.chk` (MD5 sums, `md5sum -c` format). The web process imports
this module, so it must not import torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from catalog.models import ModelVariant
from core.errors import InvalidInput

PARAMS = "params.json"
TOKENIZER = "tokenizer.model"
CHECKLIST = "checklist.chk"
SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")
_CHECKLIST_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *](.+)$")
_SHAPE_KEYS = ("dim", "n_heads", "n_layers")


@dataclass(frozen=True)
class LocalFile:
    path: str  # the name in the checkpoint (and in the manifest)
    source: Path  # where it is on disk
    size: int
    expected_md5: str | None  # from checklist.chk, when it lists the file


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    params: dict
    files: list[LocalFile]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def shard_name(rank: int) -> str:
    return f"consolidated.{rank:02d}.pth"


def checklist_parse(text: str) -> dict[str, str]:
    """{file name: md5} from `md5sum` output; raises InvalidInput on a line it cannot read."""
    sums: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        match = _CHECKLIST_LINE.match(line)
        if not match:
            raise InvalidInput(
                f"checklist.chk line {number} is not '<md5>  <file name>': {line[:80]!r}"
            )
        sums[match.group(2).strip().removeprefix("./")] = match.group(1).lower()
    return sums


def checklist_render(rows: list[tuple[str, str]]) -> str:
    """`md5sum -c` input for (md5, path) rows."""
    return "".join(f"{md5}  {path}\n" for md5, path in rows)


def checkpoint_inspect(*, directory: Path, variant: ModelVariant) -> Checkpoint:
    """Check `directory` is a checkpoint for `variant` in the release layout, or raise
    InvalidInput saying what is wrong and how to fix it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInput(f"{directory} is not a directory.")

    params_path = directory / PARAMS
    if not params_path.is_file():
        raise InvalidInput(f"{directory} has no {PARAMS}: is it a checkpoint folder?")
    try:
        params = json.loads(params_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{params_path} is not valid JSON: {exc}") from None
    if not isinstance(params, dict) or any(not isinstance(params.get(k), int) for k in _SHAPE_KEYS):
        raise InvalidInput(f"{params_path} must give integer {', '.join(_SHAPE_KEYS)}.")
    if variant.slug != "demo":
        for key in _SHAPE_KEYS:
            if params[key] != variant.params.get(key):
                raise InvalidInput(
                    f"{PARAMS} says {key}={params[key]} but LLaMA {variant.size} has "
                    f"{key}={variant.params.get(key)}: is --size right?"
                )

    ranks = sorted(int(m.group(1)) for p in directory.iterdir() if (m := SHARD_RE.match(p.name)))
    wanted = list(range(variant.shard_count))
    if ranks != wanted:
        found = ", ".join(shard_name(r) for r in ranks) or "none"
        raise InvalidInput(
            f"LLaMA {variant.size} has {variant.shard_count} model-parallel shard(s) "
            f"({shard_name(0)} to {shard_name(variant.shard_count - 1)}); found: {found}."
        )

    tokenizer = directory / TOKENIZER
    if not tokenizer.is_file():
        tokenizer = directory.parent / TOKENIZER  # the original release kept it one level up
    if not tokenizer.is_file():
        raise InvalidInput(f"No {TOKENIZER} in {directory} or beside it.")

    sums: dict[str, str] = {}
    if (directory / CHECKLIST).is_file():
        sums = checklist_parse((directory / CHECKLIST).read_text(errors="replace"))
    sources = {PARAMS: params_path, TOKENIZER: tokenizer}
    sources.update({shard_name(r): directory / shard_name(r) for r in wanted})
    unknown = sorted(set(sums) - set(sources))
    for name in unknown:
        if not (directory / name).exists():
            raise InvalidInput(f"checklist.chk lists {name}, which is not in {directory}.")

    files = [
        LocalFile(path=name, source=src, size=src.stat().st_size, expected_md5=sums.get(name))
        for name, src in sorted(sources.items())
    ]
    return Checkpoint(directory=directory, params=params, files=files)
