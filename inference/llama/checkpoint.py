"""Checkpoints in the original LLaMA release layout: read, verify, merge, split, write.

A checkpoint directory holds `params.json`, `consolidated.00.pth` ... `consolidated.NN.pth`
(one per model-parallel rank: 7B 1, 13B 2, 33B 4, 65B 8), `checklist.chk` (MD5 sums in
`md5sum -c` format) and usually `tokenizer.model` (the original release kept it one level
up, beside the size folders; both places are searched).

Model-parallel split rule
-------------------------
The original code built every layer from fairscale's model-parallel modules, and a
weight's split dimension follows from which module it was:

- ColumnParallelLinear splits the *output* features: each rank computes its own slice of
  the output from the full input, with no communication. torch stores a Linear weight as
  `[out, in]`, so these concatenate on **dim 0**: `attention.wq`, `attention.wk`,
  `attention.wv` (each rank owns whole heads, so attention itself stays local),
  `feed_forward.w1` and `feed_forward.w3` (SwiGLU's gate and up projections are
  elementwise per hidden unit, so their product stays local too), and `output` (each rank
  scores a slice of the vocabulary; the logits are all-gathered).
- RowParallelLinear splits the *input* features: it consumes the activation slice its rank
  produced and the partial outputs are summed (all-reduce). These concatenate on
  **dim 1**: `attention.wo` (input = the rank's heads) and `feed_forward.w2` (input = the
  rank's hidden units).
- ParallelEmbedding splits the *embedding dimension*: each rank looks up a slice of every
  vector and the slices are all-gathered. `tok_embeddings` concatenates on **dim 1** in
  LLaMA 1 and 2. (LLaMA 3 uses a vocabulary-parallel embedding, dim 0; the loader tells
  the two apart by the shard shapes and merges either.)
- RMSNorm weights (`attention_norm`, `ffn_norm`, `norm`) are tiny and needed whole by
  every rank: **replicated**, identical in every shard; the merge takes shard 0's copy.
- `rope.freqs` (a buffer saved in LLaMA 1 shards) is derived data and is ignored.

Merging concatenates the shards in rank order along that dimension; `split_state_dict`
is the inverse and is how the demo writes `--shards N`. A tensor-parallel rank loads only
its own shard(s) (`load_model(..., parallel=...)`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .layout import (
    CHECKLIST,
    PARAMS,
    SHARD_RE,
    TOKENIZER,
    CheckpointError,
    ChecksumError,
    MissingFileError,
    MissingShardError,
    ShapeMismatchError,
    VocabSizeError,
    checklist_read,
    digest_algorithm,
    find_tokenizer,
    read_params,
    shard_name,
)
from .model import ModelArgs, Transformer
from .parallel import Parallel
from .tokenizer import Tokenizer

IGNORED_KEYS = frozenset({"rope.freqs"})

_DIM0 = ("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight", "output.weight")
_DIM1 = ("wo.weight", "w2.weight", "tok_embeddings.weight")
_REPLICATED = ("norm.weight",)  # attention_norm, ffn_norm, norm


def split_dim(name: str) -> int | None:
    """The model-parallel concatenation dim of a weight (see the module docstring)."""
    if name.endswith(_DIM0):
        return 0
    if name.endswith(_DIM1):
        return 1
    if name.endswith(_REPLICATED):
        return None
    raise CheckpointError(f"no model-parallel split rule for weight {name!r}")


# -- params, tokenizer ----------------------------------------------------------------------
def load_tokenizer(ckpt_dir: str | Path, tokenizer: Tokenizer | str | Path | None = None):
    """The checkpoint's tokenizer: the one given, or tokenizer.model beside/above the dir."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    path = Path(tokenizer) if tokenizer is not None else find_tokenizer(ckpt_dir)
    if path is None:
        raise MissingFileError(f"no {TOKENIZER} in {ckpt_dir} or its parent")
    return Tokenizer(path)


def resolve_args(
    params: Mapping[str, Any],
    tokenizer: Tokenizer | None,
    *,
    max_seq_len: int | None = None,
) -> ModelArgs:
    """ModelArgs from params.json, with vocab_size -1 taken from the tokenizer."""
    vocab = int(params.get("vocab_size", -1))
    if tokenizer is not None:
        if vocab <= 0:
            vocab = tokenizer.n_words
        elif vocab != tokenizer.n_words:
            raise VocabSizeError(
                f"params.json says vocab_size {vocab} but the tokenizer has "
                f"{tokenizer.n_words} pieces: wrong tokenizer.model for this checkpoint?"
            )
    if vocab <= 0:
        raise VocabSizeError("params.json has vocab_size -1 and no tokenizer was given")
    try:
        return ModelArgs.from_params(dict(params), vocab_size=vocab, max_seq_len=max_seq_len)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"params.json: {exc}") from exc


# -- integrity -------------------------------------------------------------------------------
def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _load_manifest(manifest: Mapping[str, str] | str | Path) -> dict[str, str]:
    if isinstance(manifest, Mapping):
        return {str(k).removeprefix("./"): str(v).lower() for k, v in manifest.items()}
    path = Path(manifest)
    if path.suffix == ".json":
        return _load_manifest(json.loads(path.read_text()))
    return checklist_read(path)


def verify(
    ckpt_dir: str | Path, manifest: Mapping[str, str] | str | Path | None = None
) -> list[str]:
    """Check the files listed in `manifest` (default: the dir's checklist.chk).

    A manifest is a {relative path: hex digest} mapping, a JSON file of one, or an
    md5sum-style file; the algorithm follows from the digest length (MD5 for the original
    checklist, SHA-256 for the portal's manifests). Returns the names checked.
    """
    ckpt_dir = Path(ckpt_dir)
    if manifest is None:
        if not (ckpt_dir / CHECKLIST).is_file():
            raise MissingFileError(f"no {CHECKLIST} in {ckpt_dir} to verify against")
        manifest = ckpt_dir / CHECKLIST
    entries = _load_manifest(manifest)
    for name, expected in sorted(entries.items()):
        path = ckpt_dir / name
        if not path.is_file():
            cls = MissingShardError if SHARD_RE.match(Path(name).name) else MissingFileError
            raise cls(f"{path} is listed in the manifest but missing")
        actual = file_digest(path, digest_algorithm(expected))
        if actual != expected:
            raise ChecksumError(f"{path}: checksum {actual} does not match {expected}")
    return sorted(entries)


def shard_paths(
    ckpt_dir: str | Path, manifest: Mapping[str, str] | str | Path | None = None
) -> list[Path]:
    """consolidated.00.pth ... in rank order, checking that none is missing.

    The expected count comes from the manifest or checklist.chk when there is one (their
    names are read, not their hashes, so this is cheap); otherwise the numbering must run
    from 00 without gaps.
    """
    ckpt_dir = Path(ckpt_dir)
    found = {int(m.group(1)): p for p in ckpt_dir.iterdir() if (m := SHARD_RE.match(p.name))}
    listed: set[int] = set()
    if manifest is None and (ckpt_dir / CHECKLIST).is_file():
        manifest = ckpt_dir / CHECKLIST
    if manifest is not None:
        listed = {int(m.group(1)) for n in _load_manifest(manifest) if (m := SHARD_RE.match(n))}
    if not found and not listed:
        raise MissingShardError(f"no consolidated.NN.pth shard in {ckpt_dir}")
    count = max([*found, *listed]) + 1
    missing = [shard_name(i) for i in range(count) if i not in found]
    if missing:
        raise MissingShardError(f"{ckpt_dir}: missing shard(s) {', '.join(missing)} of {count}")
    return [found[i] for i in range(count)]


# -- merge / split -------------------------------------------------------------------------
def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    try:
        # mmap: a 65B shard is 16 GB; pages are read only as tensors are copied out.
        sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict")
    return {k: v for k, v in sd.items() if k not in IGNORED_KEYS}


def _concat_dim(name: str, shard_shape: torch.Size, n: int, args: ModelArgs | None) -> int | None:
    dim = split_dim(name)
    # LLaMA 1/2 split the embedding dim, LLaMA 3 the vocabulary: the shapes tell.
    if (
        name == "tok_embeddings.weight"
        and args is not None
        and shard_shape[1] * n != args.dim
        and shard_shape[0] * n == args.vocab_size
    ):
        return 0
    return dim


def merge_shards(
    shards: Sequence[Mapping[str, torch.Tensor]],
    args: ModelArgs | None = None,
    names: Sequence[str] | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """One state dict from model-parallel shards, concatenated by the split rule.

    Each merged tensor is converted to dtype/device right away, so at most one full-size
    tensor in the checkpoint's dtype exists at a time besides the result.
    """
    names = list(names) if names is not None else [f"shard {i}" for i in range(len(shards))]
    first = shards[0]
    for i, sd in enumerate(shards[1:], 1):
        if sd.keys() != first.keys():
            diff = sorted(set(sd) ^ set(first))[:5]
            raise CheckpointError(f"{names[i]} and {names[0]} hold different weights: {diff}")
    merged: dict[str, torch.Tensor] = {}
    for key in first:
        parts = [sd[key] for sd in shards]
        for i, part in enumerate(parts[1:], 1):
            if part.shape != parts[0].shape:
                raise ShapeMismatchError(
                    f"{key}: {names[i]} has shape {list(part.shape)} but {names[0]} has "
                    f"{list(parts[0].shape)}"
                )
        dim = _concat_dim(key, parts[0].shape, len(parts), args) if len(parts) > 1 else None
        tensor = parts[0] if dim is None else torch.cat(parts, dim=dim)
        merged[key] = tensor.to(device=device, dtype=dtype) if (dtype or device) else tensor
    return merged


def split_state_dict(
    state_dict: Mapping[str, torch.Tensor], n: int
) -> list[dict[str, torch.Tensor]]:
    """The inverse of merge_shards: n model-parallel shards (LLaMA 1/2 layout)."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for key, tensor in state_dict.items():
        dim = split_dim(key)
        if dim is not None and tensor.shape[dim] % n:
            raise ShapeMismatchError(f"{key} {list(tensor.shape)} does not split into {n}")
        for i in range(n):
            part = tensor if dim is None else tensor.chunk(n, dim=dim)[i]
            shards[i][key] = part.clone().contiguous()
    return shards


def expected_shapes(args: ModelArgs, parallel: Parallel | None = None) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = Transformer(args, parallel)
    return {k: v.shape for k, v in model.state_dict().items()}


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    args: ModelArgs,
    parallel: Parallel | None = None,
    where: str = "checkpoint",
) -> None:
    """Raise a clear error if the weights do not fit `args` (vocab first: it is the
    commonest mismatch, a tokenizer from another release)."""
    ws = parallel.world_size if parallel else 1
    emb = state_dict.get("tok_embeddings.weight")
    out = state_dict.get("output.weight")
    if emb is not None and emb.shape[0] != args.vocab_size:
        raise VocabSizeError(
            f"{where}: tok_embeddings has {emb.shape[0]} rows but the vocabulary has "
            f"{args.vocab_size} tokens"
        )
    if out is not None and out.shape[0] * ws != args.vocab_size:
        raise VocabSizeError(
            f"{where}: output has {out.shape[0] * ws} rows but the vocabulary has "
            f"{args.vocab_size} tokens"
        )
    expected = expected_shapes(args, parallel)
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{where}: weights do not match params.json (n_layers {args.n_layers}): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for key, shape in expected.items():
        if state_dict[key].shape != shape:
            raise ShapeMismatchError(
                f"{where}: {key} has shape {list(state_dict[key].shape)}, params.json "
                f"implies {list(shape)}"
            )


def _rank_state_dict(
    paths: Sequence[Path],
    args: ModelArgs,
    parallel: Parallel,
    dtype: torch.dtype,
    device: torch.device | str,
) -> dict[str, torch.Tensor]:
    """The slice of the model that `parallel.rank` holds, reading only the shards it needs."""
    n, ws, rank = len(paths), parallel.world_size, parallel.rank
    if n % ws == 0:
        # Each rank merges a run of consecutive shards (e.g. 65B's 8 shards on 4 GPUs).
        per = n // ws
        mine = paths[rank * per : (rank + 1) * per]
        return merge_shards(
            [_load_shard(p) for p in mine], args, [p.name for p in mine], dtype=dtype, device=device
        )
    if ws % n == 0:
        # Several ranks share one shard and each keeps its piece of it.
        per = ws // n
        path = paths[rank // per]
        sd = _load_shard(path)
        out = {}
        for key, tensor in sd.items():
            dim = split_dim(key)
            if dim is not None:
                tensor = tensor.chunk(per, dim=dim)[rank % per]
            out[key] = tensor.to(device=device, dtype=dtype)
        return out
    raise CheckpointError(f"{n} shards cannot be spread over {ws} tensor-parallel ranks")


def load_model(
    ckpt_dir: str | Path,
    *,
    tokenizer: Tokenizer | str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    max_seq_len: int | None = None,
    verify_files: bool = False,
    manifest: Mapping[str, str] | str | Path | None = None,
    parallel: Parallel | None = None,
) -> Transformer:
    """A ready model (eval, no grad) from a checkpoint directory.

    Several shards are merged by the split rule, or, under `parallel`, each rank reads only
    its own. Files are checked against `manifest` when one is given, or against
    checklist.chk when `verify_files` is set. The tokenizer (given, or found beside the
    checkpoint) supplies vocab_size when params.json says -1 and is checked otherwise.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise MissingFileError(f"checkpoint directory {ckpt_dir} does not exist")
    if manifest is not None:
        verify(ckpt_dir, manifest)
    elif verify_files:
        verify(ckpt_dir)
    params = read_params(ckpt_dir)
    tok: Tokenizer | None = None
    if tokenizer is not None or find_tokenizer(ckpt_dir) is not None:
        tok = load_tokenizer(ckpt_dir, tokenizer)
    args = resolve_args(params, tok, max_seq_len=max_seq_len)
    paths = shard_paths(ckpt_dir, manifest)
    par = parallel or Parallel()
    if par.enabled:
        sd = _rank_state_dict(paths, args, par, dtype, device)
        where = f"rank {par.rank} of {par.world_size}"
    else:
        sd = merge_shards(
            [_load_shard(p) for p in paths],
            args,
            [p.name for p in paths],
            dtype=dtype,
            device=device,
        )
        where = str(ckpt_dir)
    check_state_dict(sd, args, par, where)
    with torch.device("meta"):
        model = Transformer(args, par)
    # assign=True adopts the loaded tensors (mmap-backed when no conversion was needed)
    # instead of copying them into freshly allocated parameters.
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False)


# -- writing -------------------------------------------------------------------------------
def save_checkpoint(
    out_dir: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    params: Mapping[str, Any],
    *,
    shards: int = 1,
    tokenizer_model: bytes | None = None,
    checklist: bool = True,
) -> list[Path]:
    """Write the original layout: params.json, consolidated.NN.pth, tokenizer.model,
    checklist.chk. Returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    params_path = out / PARAMS
    params_path.write_text(json.dumps(dict(params)) + "\n")
    written.append(params_path)
    for i, shard in enumerate(split_state_dict(state_dict, shards)):
        path = out / shard_name(i)
        torch.save(shard, path)
        written.append(path)
    if tokenizer_model is not None:
        tok_path = out / TOKENIZER
        tok_path.write_bytes(tokenizer_model)
        written.append(tok_path)
    if checklist:
        lines = [f"{file_digest(p, 'md5')}  {p.name}" for p in sorted(written)]
        chk = out / CHECKLIST
        chk.write_text("\n".join(lines) + "\n")
        written.append(chk)
    return written
