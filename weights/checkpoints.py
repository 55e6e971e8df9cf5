"""The original LLaMA release layout, checked without loading anything.

`publish_weights` calls `checkpoint_inspect` before it uploads a byte: `params.json`,
`consolidated.NN.pth` with exactly the shard count the catalog gives the size,
`tokenizer.model` (in the folder or, as in the original release, one level up) and,
when present, `checklist.chk`. The rules of the layout itself (names, checklist format,
where the tokenizer is) are the engine's, in `inference.llama.layout`, which imports no
torch; this module adds what the catalog knows (the size's shape and shard count).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from catalog.models import ModelVariant
from core.errors import InvalidInput
from inference.llama import layout
from inference.llama.layout import CHECKLIST, PARAMS, TOKENIZER, checklist_render, shard_name

__all__ = ["Checkpoint", "LocalFile", "checklist_render", "checkpoint_inspect"]

_SHAPE_KEYS = ("dim", "n_heads", "n_layers")
# What publishing can check while it streams a file (it computes both as it uploads).
_CHECKABLE = {"md5", "sha256"}


@dataclass(frozen=True)
class LocalFile:
    path: str  # the name in the checkpoint (and in the manifest)
    source: Path  # where it is on disk
    size: int
    expected_digest: str | None  # from checklist.chk (MD5 or SHA-256), when it lists the file


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    params: dict
    files: list[LocalFile]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


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
        params = layout.read_params(directory)
    except layout.CheckpointError as exc:
        raise InvalidInput(str(exc)) from None
    if variant.slug != "demo":
        for key in _SHAPE_KEYS:
            if params[key] != variant.params.get(key):
                raise InvalidInput(
                    f"{PARAMS} says {key}={params[key]} but LLaMA {variant.size} has "
                    f"{key}={variant.params.get(key)}: is --size right?"
                )

    ranks = layout.shard_ranks(directory)
    wanted = list(range(variant.shard_count))
    if ranks != wanted:
        found = ", ".join(shard_name(r) for r in ranks) or "none"
        raise InvalidInput(
            f"LLaMA {variant.size} has {variant.shard_count} model-parallel shard(s) "
            f"({shard_name(0)} to {shard_name(variant.shard_count - 1)}); found: {found}."
        )

    tokenizer = layout.find_tokenizer(directory)
    if tokenizer is None:
        raise InvalidInput(f"No {TOKENIZER} in {directory} or beside it.")

    sums: dict[str, str] = {}
    if (directory / CHECKLIST).is_file():
        try:
            sums = layout.checklist_read(directory / CHECKLIST)
        except layout.CheckpointError as exc:
            raise InvalidInput(str(exc)) from None
        for name, digest in sums.items():
            if layout.digest_algorithm(digest) not in _CHECKABLE:
                raise InvalidInput(
                    f"{CHECKLIST} gives a {layout.digest_algorithm(digest).upper()} digest for "
                    f"{name}; publishing checks MD5 (as in the original release) or SHA-256."
                )
    sources = {PARAMS: params_path, TOKENIZER: tokenizer}
    sources.update({shard_name(r): directory / shard_name(r) for r in wanted})
    unknown = sorted(set(sums) - set(sources))
    for name in unknown:
        if not (directory / name).exists():
            raise InvalidInput(f"checklist.chk lists {name}, which is not in {directory}.")

    files = [
        LocalFile(path=name, source=src, size=src.stat().st_size, expected_digest=sums.get(name))
        for name, src in sorted(sources.items())
    ]
    return Checkpoint(directory=directory, params=params, files=files)
