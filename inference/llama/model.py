"""The LLaMA transformer, with the parameter names of the original release.

A `consolidated.NN.pth` state dict loads into `Transformer` as is: `tok_embeddings`,
`layers.N.attention.{wq,wk,wv,wo}`, `layers.N.feed_forward.{w1,w2,w3}`,
`layers.N.{attention_norm,ffn_norm}`, `norm`, `output`.

Three entry points share the layers:

- `forward(tokens)`: the whole sequence from position 0, no cache (tests, training).
- `prefill(tokens, cache, slots, ...)`: prompts from position 0, written into chosen rows
  ("slots") of a `KVCache`; right padding is harmless because attention is causal.
- `decode(tokens, positions, cache)`: one token for each of the cache rows `0..B-1`,
  each at its own position, so sequences of different lengths advance together.

Under tensor parallelism (`parallel.Parallel` with world_size > 1) every module holds its
rank's slice of the weights, exactly the slice of the original model-parallel shard; the
two collectives per layer are in `Attention.forward` / `FeedForward.forward`.

Inference runs on a prepared form of the weights (`Transformer.prepare`, done lazily on
the first call without gradients, or by `Llama.load`): q/k/v fused into one matrix and
gate/up into another (`kernels.Proj`), RoPE as a precomputed cos/sin table, the keys and
values of a layer in one cache tensor, so a decode step is a few kernels per layer. By
default the original parameters become views of the fused matrices (no second copy,
state_dict unchanged); packed for oneDNN or quantized to int8, the plain weights are
released and state_dict() rebuilds them. The module-by-module code (`fused = False`, or
any pass that records gradients, as training the demo does) is the reference the fused
path is tested against.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels
from .kernels import SMALL_ROWS, Proj, can_pack, fused_decode_available, small_linear
from .parallel import Parallel

_SINGLE = Parallel()

__all__ = [
    "SMALL_ROWS",
    "KVCache",
    "ModelArgs",
    "ThreadChooser",
    "Transformer",
    "apply_rope",
    "init_weights",
    "rope_table",
    "small_linear",
]


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """The SwiGLU hidden size of the original code: 2/3 of 4*dim, scaled, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = -1
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Not in a v1 params.json: the original example script passed 512, the model was trained
    # on 2048 (LLaMA 1) or 4096 (LLaMA 2). It sizes the RoPE table and bounds generation.
    max_seq_len: int = 2048

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads")
        if self.head_dim % 2:
            raise ValueError("the head dimension must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def hidden_dim(self) -> int:
        return ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @classmethod
    def from_params(cls, params: dict[str, Any], **overrides: Any) -> ModelArgs:
        """Build from a `params.json` dict. Unknown keys are ignored (later releases add
        bookkeeping keys); a feature this engine does not implement is refused."""
        if params.get("use_scaled_rope"):
            raise ValueError("params.json asks for scaled RoPE (LLaMA 3.1), not supported")
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in params.items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_params(self) -> dict[str, Any]:
        """The `params.json` form; keys left at None are omitted, as in the originals."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def n_params(self) -> int:
        d, h, v = self.dim, self.hidden_dim, self.vocab_size
        kv = self.kv_heads * self.head_dim
        per_layer = 2 * d * d + 2 * d * kv + 3 * d * h + 2 * d
        return self.n_layers * per_layer + 2 * v * d + d


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 and cast back before the weight, as the original does; in
        # float32 the casts are no-ops.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_table(head_dim: int, max_seq_len: int, theta: float, device=None) -> torch.Tensor:
    """Complex rotations e^(i*pos*theta^(-2j/d)), one row per position (original freqs_cis)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    pos = torch.arange(max_seq_len, device=device, dtype=torch.float32)
    return torch.polar(torch.ones(max_seq_len, head_dim // 2, device=device), torch.outer(pos, inv))


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0,x1),(x2,x3)... of the last dim by `freqs`.

    x: [..., T, H, D]; freqs: complex [..., T, D/2] broadcast over heads. The original code
    pairs neighbouring elements (not halves, as transformers does), which is why converted
    checkpoints permute wq/wk rows.
    """
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    out = torch.view_as_real(xc * freqs.unsqueeze(-2)).flatten(-2)
    return out.type_as(x)


def rope_cos_sin(
    head_dim: int, max_seq_len: int, theta: float, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotations of `rope_table` as two real tables `[max_seq_len, head_dim]`, for
    `x * cos + pair_swap(x) * sin`: cos repeated over each pair, sin as (-s, +s)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv)
    cos = angles.cos().repeat_interleave(2, dim=-1)
    sin = torch.stack([-angles.sin(), angles.sin()], dim=-1).flatten(-2)
    return cos, sin


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair rotation with real tables: 3 kernels (flip, mul, addcmul), no
    complex view. The result has the tables' dtype (float32), as the original rotates
    in float32."""
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return torch.addcmul(x * cos, swapped, sin)


class KVCache:
    """Preallocated keys and values, `[rows, kv_heads, max_seq_len, head_dim]` per layer.

    Rows are the "slots" of a batch decoder; the layout keeps one row's positions contiguous
    so decode attention reads `k[:B, :, :T]` as a view, without copying the cache. A
    layer's keys and values are the two halves of one tensor `kv[layer]`, so a decode step
    writes both with one indexed copy.
    """

    def __init__(
        self,
        n_layers: int,
        max_batch_size: int,
        kv_heads: int,
        max_seq_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (2, max_batch_size, kv_heads, max_seq_len, head_dim)
        self.kv = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.k = [t[0] for t in self.kv]
        self.v = [t[1] for t in self.kv]
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self._float: torch.Tensor | None = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kv)

    def as_float(self, layer: int, rows: int, span: int) -> torch.Tensor:
        """Keys and values `[2, rows, KV, span, D]` of a layer copied to float32, into one
        buffer the layers share (allocated once: a fresh 10-30 MB tensor per layer would
        cost its page faults every step). What CPU decode attends over in half precision."""
        kv = self.kv[layer]
        if self._float is None:
            self._float = torch.empty(kv.shape, dtype=torch.float32, device=kv.device)
        out = self._float[:, :rows, :, :span]
        out.copy_(kv[:, :rows, :, :span])
        return out


def rms_norm(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    """`F.rms_norm` with the module's weight; a few float32 rows on the CPU (decode) go to
    one C++ call (`cpu_kernels.rms_norm`) instead of ATen's six operators."""
    w = norm.weight
    if x.dtype == torch.float32 and x.device.type == "cpu" and x.numel() <= SMALL_ROWS * w.numel():
        mod = cpu_kernels.kernel()
        if mod is not None and w.dtype == torch.float32:
            return mod.rms_norm(x, w, norm.eps)
    return F.rms_norm(x, w.shape, w, norm.eps)


class _Step:
    """What one forward pass needs besides the activations (shared by all layers)."""

    __slots__ = (
        "cache",
        "cos",
        "freqs",
        "mask",
        "mode",
        "positions",
        "rows",
        "sin",
        "slots",
        "span",
    )

    def __init__(self, mode: str, **kw: Any):
        self.mode = mode
        self.freqs: torch.Tensor | None = kw.get("freqs")  # complex, reference path
        self.cos: torch.Tensor | None = kw.get("cos")  # real tables, fused path
        self.sin: torch.Tensor | None = kw.get("sin")
        self.cache: KVCache | None = kw.get("cache")
        self.slots: torch.Tensor | slice | None = kw.get("slots")
        self.positions: torch.Tensor | None = kw.get("positions")
        self.rows: torch.Tensor | None = kw.get("rows")
        self.mask: torch.Tensor | None = kw.get("mask")
        self.span: int = kw.get("span", 0)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, par: Parallel):
        super().__init__()
        ws = par.world_size
        if args.n_heads % ws or args.kv_heads % ws:
            raise ValueError(
                f"{args.n_heads} heads / {args.kv_heads} kv heads do not split over {ws} ranks"
            )
        self.par = par
        self.n_heads = args.n_heads // ws
        self.n_kv = args.kv_heads // ws
        self.rep = self.n_heads // self.n_kv
        self.head_dim = args.head_dim
        # Column-parallel (output dim split): each rank computes its own heads.
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv * self.head_dim, bias=False)
        # Row-parallel (input dim split): partial sums, reduced across ranks.
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)
        self.qkv: Proj | None = None  # the prepared form (Transformer.prepare)
        self.o: Proj | None = None

    # -- the prepared (fused) path -----------------------------------------------------
    def fused_forward(self, x: torch.Tensor, layer: int, step: _Step) -> torch.Tensor:
        assert self.qkv is not None and self.o is not None
        bsz, seqlen, _ = x.shape
        hq, hkv, hd = self.n_heads, self.n_kv, self.head_dim
        qkv = self.qkv(x).view(bsz, seqlen, hq + 2 * hkv, hd)
        if step.mode == "decode":
            # One rotation over all heads: the step's tables carry cos 1, sin 0 for the
            # value heads and the attention scale folded into the query heads. The result
            # is float32; the cache write rounds keys and values to the cache's dtype.
            qkv = rotate(qkv, step.cos, step.sin)[:, 0]  # [B, H, D]
            cache = step.cache
            assert cache is not None
            kv = cache.kv[layer]  # [2, rows, KV, S, D]
            kv[:, step.rows, :, step.positions] = qkv[:, hq:].view(bsz, 2, hkv, hd).to(kv.dtype)
            q = qkv[:, :hq].view(bsz, hkv, self.rep, hd)
            if kv.dtype != torch.float32 and kv.device.type == "cpu":
                # ATen's CPU attention in bfloat16/float16 took 3-6x the float32 time for
                # one query (100M shape, 64 positions, batch 1 and 8: bfloat16 71 against
                # 25 us, float16 194 against 61, the copy to float32 included) and half a
                # 100M decode step: attend in float32 over a float32 copy of the span.
                keys, values = cache.as_float(layer, bsz, step.span)
            else:
                q = q.to(kv.dtype)
                keys, values = kv[0, :bsz, :, : step.span], kv[1, :bsz, :, : step.span]
            # Grouped-query attention without repeating the cache: the `rep` query heads
            # of a group share one key head, so they are that group's rows of queries.
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=step.mask, scale=1.0)
            out = out.reshape(bsz, 1, hq * hd).to(x.dtype)
        else:
            qk = rotate(qkv[:, :, : hq + hkv], step.cos, step.sin).to(x.dtype)
            q = qk[:, :, :hq].transpose(1, 2)
            k = qk[:, :, hq:].transpose(1, 2)
            v = qkv[:, :, hq + hkv :].transpose(1, 2)
            if step.mode == "prefill":
                cache = step.cache
                assert cache is not None and step.slots is not None
                # The prompt attends over its own keys and values; the cache keeps them
                # in its dtype (float16 for a q8_0 model's float32 activations).
                cache.k[layer][step.slots, :, :seqlen] = k.to(cache.k[layer].dtype)
                cache.v[layer][step.slots, :, :seqlen] = v.to(cache.v[layer].dtype)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.rep > 1)
            out = out.transpose(1, 2).reshape(bsz, seqlen, -1)
        return self.par.all_reduce(self.o(out))

    # -- the reference path: module by module, as the original code ----------------------
    def forward(self, x: torch.Tensor, layer: int, step: _Step) -> torch.Tensor:
        if step.mode == "decode":
            return self._decode(x, layer, step)
        bsz, seqlen, _ = x.shape
        q = self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x).view(bsz, seqlen, self.n_kv, self.head_dim)
        v = self.wv(x).view(bsz, seqlen, self.n_kv, self.head_dim)
        q = apply_rope(q, step.freqs)
        k = apply_rope(k, step.freqs)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if step.mode == "prefill":
            cache = step.cache
            assert cache is not None and step.slots is not None
            cache.k[layer][step.slots, :, :seqlen] = k
            cache.v[layer][step.slots, :, :seqlen] = v
        # Prompts start at position 0, so plain causal attention over the fresh keys is
        # exact, and the fused kernel never materialises the T x T score matrix.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.rep > 1)
        out = out.transpose(1, 2).reshape(bsz, seqlen, -1)
        return self.par.all_reduce(self.wo(out))

    def _decode(self, x: torch.Tensor, layer: int, step: _Step) -> torch.Tensor:
        bsz = x.shape[0]
        q = small_linear(x, self.wq.weight).view(bsz, 1, self.n_heads, self.head_dim)
        k = small_linear(x, self.wk.weight).view(bsz, 1, self.n_kv, self.head_dim)
        v = small_linear(x, self.wv.weight).view(bsz, 1, self.n_kv, self.head_dim)
        q = apply_rope(q, step.freqs)
        k = apply_rope(k, step.freqs)
        cache = step.cache
        assert cache is not None
        ck, cv = cache.k[layer], cache.v[layer]
        ck[step.rows, :, step.positions] = k[:, 0]
        cv[step.rows, :, step.positions] = v[:, 0]
        keys = ck[:bsz, :, : step.span]  # views: [B, KV, T, D]
        values = cv[:bsz, :, : step.span]
        q = q.view(bsz, self.n_kv, self.rep, self.head_dim)
        scores = torch.matmul(q, keys.transpose(-1, -2)).float()
        scores = scores * (1.0 / math.sqrt(self.head_dim))
        if step.mask is not None:
            scores = scores.masked_fill(~step.mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1).type_as(q)
        out = torch.matmul(probs, values).reshape(bsz, 1, self.n_heads * self.head_dim)
        return self.par.all_reduce(small_linear(out, self.wo.weight))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs, par: Parallel):
        super().__init__()
        hidden = args.hidden_dim
        if hidden % par.world_size:
            raise ValueError(f"ffn hidden size {hidden} does not split over {par.world_size}")
        self.par = par
        local = hidden // par.world_size
        self.w1 = nn.Linear(args.dim, local, bias=False)  # gate, column-parallel
        self.w2 = nn.Linear(local, args.dim, bias=False)  # down, row-parallel
        self.w3 = nn.Linear(args.dim, local, bias=False)  # up, column-parallel
        self.w13: Proj | None = None  # the prepared form: gate and up in one matrix
        self.down: Proj | None = None

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.w13 is not None and self.down is not None
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.par.all_reduce(self.down(F.silu(gate).mul_(up)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] == 1:  # a decode step: few rows
            gate = F.silu(small_linear(x, self.w1.weight)) * small_linear(x, self.w3.weight)
            return self.par.all_reduce(small_linear(gate, self.w2.weight))
        return self.par.all_reduce(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs, par: Parallel):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args, par)
        self.feed_forward = FeedForward(args, par)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x: torch.Tensor, step: _Step) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), self.layer_id, step)
        return h + self.feed_forward(self.ffn_norm(h))

    def fused_forward(self, x: torch.Tensor, step: _Step) -> torch.Tensor:
        an, fn = self.attention_norm, self.ffn_norm
        h = x + self.attention.fused_forward(rms_norm(x, an), self.layer_id, step)
        return h + self.feed_forward.fused_forward(rms_norm(h, fn))


def _fuse(linears: list[nn.Linear]) -> torch.Tensor:
    """One matrix stacking the linears' weights; each weight becomes a view into it, so the
    parameters (and state_dict) stay as they were and no second copy is kept."""
    weights = [lin.weight for lin in linears]
    if len(weights) == 1:
        return weights[0].detach()
    fused = torch.cat([w.detach() for w in weights])
    offset = 0
    for lin, w in zip(linears, weights, strict=True):
        n = w.shape[0]
        lin.weight.data = fused[offset : offset + n]
        offset += n
    return fused


def _release(linears: list[nn.Linear]) -> None:
    """Drop float weights that a quantized copy replaces (keeps shapes, on `meta`)."""
    for lin in linears:
        lin.weight = nn.Parameter(
            torch.empty(lin.weight.shape, dtype=lin.weight.dtype, device="meta"),
            requires_grad=False,
        )


class ThreadChooser:
    """How many intra-op threads a CPU decode step gets: all of them, or one.

    ATen splits each operator into one fixed share per thread and waits for all of them,
    so on a shared machine a step with 2 threads waits for whichever core is busy with
    someone else's work (measured here under load 2.7 on 2 cores: a 5632x2048 bfloat16
    matrix times one row took 4.0 ms with 2 threads, 1.5 ms with 1; quiet, 2 threads win
    by ~1.7x). Splitting the work into chunks that idle threads take in turn, done from
    Python threads, measured no better than one thread under load (Python's per-chunk
    overhead), so instead each step runs with the thread count whose recent steps were
    faster: a moving average per batch size (a new batch size starts with the count
    that wins for the others). The other count is tried after
    `explore` steps, and after twice as many each time it loses again (up to `longest`),
    since a losing try can cost ten normal steps (1B, load 5.6: 2 threads 1.0-1.8 tok/s,
    1 thread 6-15). A try's time replaces that count's average: the old one is stale.
    Results are the same either way in float32 (the few-row kernels split by output
    rows, never along a dot product).
    """

    def __init__(self, explore: int = 8, longest: int = 128, decay: float = 0.7):
        self.explore = explore
        self.longest = longest
        self.decay = decay
        self.avg: dict[tuple[int, int], float] = {}  # (rows, threads) -> seconds
        self.interval: dict[int, int] = {}  # rows -> steps between tries
        self.since: dict[int, int] = {}  # rows -> steps since the last try
        self.trying: dict[int, int] = {}  # rows -> the thread count being tried

    def choose(self, rows: int, most: int) -> int:
        if most < 2:
            return most
        one, full = self.avg.get((rows, 1)), self.avg.get((rows, most))
        if one is not None and full is not None:
            best, other = (1, most) if one < full else (most, 1)
            limit = self.interval.get(rows, self.explore)
        elif one is not None or full is not None:  # measure the other soon
            best = 1 if one is not None else most
            other = most if best == 1 else 1
            limit = 2
        else:  # a new batch size starts with what wins for the others
            best = self._best_elsewhere(most)
            other = most if best == 1 else 1
            limit = self.explore if self.avg else 2
        n = self.since.get(rows, 0) + 1
        if n >= limit:
            self.since[rows] = 0
            self.trying[rows] = other
            return other
        self.since[rows] = n
        return best

    def _best_elsewhere(self, most: int) -> int:
        wins = {1: 0, most: 0}
        for (rows, threads), seconds in self.avg.items():
            rival = self.avg.get((rows, most if threads == 1 else 1))
            if rival is not None and seconds < rival:
                wins[threads] = wins.get(threads, 0) + 1
        return 1 if wins[1] > wins[most] else most

    def record(self, rows: int, threads: int, seconds: float) -> None:
        key = (rows, threads)
        old = self.avg.get(key)
        if self.trying.get(rows) == threads:
            del self.trying[rows]
            self.avg[key] = seconds
            rival = [v for (r, t), v in self.avg.items() if r == rows and t != threads]
            lost = bool(rival) and seconds > rival[0]
            interval = self.interval.get(rows, self.explore)
            self.interval[rows] = min(2 * interval, self.longest) if lost else self.explore
            return
        self.avg[key] = seconds if old is None else self.decay * old + (1 - self.decay) * seconds


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, parallel: Parallel | None = None):
        super().__init__()
        if args.vocab_size <= 0:
            raise ValueError("vocab_size must be known (take it from the tokenizer)")
        par = parallel or _SINGLE
        if args.dim % par.world_size or args.vocab_size % par.world_size:
            raise ValueError(f"dim/vocab_size do not split over {par.world_size} ranks")
        self.args = args
        self.par = par
        # LLaMA 1/2 split the embedding on the model dimension (ParallelEmbedding).
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim // par.world_size)
        self.layers = nn.ModuleList(TransformerBlock(i, args, par) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size // par.world_size, bias=False)
        # The RoPE tables are derived data, not parameters: built lazily on the weights'
        # device so a model made on the meta device and loaded with assign=True needs no
        # extra step, and they never enter state_dict.
        self._freqs: torch.Tensor | None = None
        self._cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None
        # Inference takes the fused path (see `prepare`); False forces the reference.
        self.fused = True
        self.quantize: str | None = None
        self._out: Proj | None = None
        self._prepared_for: tuple | None = None
        self._released = False  # float weights given up for packed or int8 ones
        self._dense: dict[str, tuple[Proj, int, int]] = {}
        self._register_state_dict_hook(Transformer._dense_state_dict)
        # CPU decode steps pick 1 or all threads by measured speed (None: always all):
        # `threads` for the operator-by-operator step, `plan_threads` for the fused one.
        # The fused step hands its work out in chunks, so one thread rarely wins there,
        # and a try costs a whole step at about half speed (100M bfloat16, one row: 8.8
        # against 4.4 ms): it tries one thread after 32 steps, then up to every 1,024.
        self.threads: ThreadChooser | None = ThreadChooser()
        self.plan_threads: ThreadChooser | None = ThreadChooser(explore=32, longest=1024)
        self._plan: tuple[tuple, Any] | None = None  # (what it was built from, DecodePlan)

    # -- helpers -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        # The embedding is never quantized: its dtype is the activations' dtype.
        return self.tok_embeddings.weight.dtype

    @property
    def cache_dtype(self) -> torch.dtype:
        """The dtype `new_cache` keeps keys and values in: the model's, except float16 for
        q8_0 weights with float32 activations, as llama.cpp keeps its q8_0 models' cache
        (f16 by default). On the tests' random model the logits then move from a float32
        cache's by less than q8_0's rounding of the activations moves them from weight-only
        int8's, within q8_0's tolerance of float32; decode attention reads half the bytes.
        Weight-only int8 keeps the model's dtype (gpt-fast's scheme)."""
        if self.quantize == "q8_0" and self.dtype == torch.float32:
            return torch.float16
        return self.dtype

    def freqs(self) -> torch.Tensor:
        dev = self.device
        if self._freqs is None or self._freqs.device != dev:
            self._freqs = rope_table(
                self.args.head_dim, self.args.max_seq_len, self.args.rope_theta, device=dev
            )
        return self._freqs

    def cos_sin(self) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        if self._cos_sin is None or self._cos_sin[0].device != dev:
            self._cos_sin = rope_cos_sin(
                self.args.head_dim, self.args.max_seq_len, self.args.rope_theta, device=dev
            )
        return self._cos_sin

    def _signature(self) -> tuple:
        # What the prepared weights were built from: if a parameter was replaced (.to(),
        # load_state_dict) since, they are rebuilt. In-place updates need nothing: the
        # parameters are views of the fused matrices.
        first = self.layers[0].attention.wq.weight
        return (first.data_ptr(), self.dtype, first.device, self.output.weight.data_ptr())

    def prepare(self, quantize: str | None = None, *, pack: bool = False) -> Transformer:
        """Build the inference form of the weights: fused q/k/v and gate/up matrices.

        - default: the parameters become views of the fused matrices (no second copy,
          state_dict and training untouched); done lazily on the first inference pass;
        - `pack=True` (CPU, float32 or bfloat16; `Llama.load` asks for it): the fused
          matrices are reordered into oneDNN's layout, which multiplies a few rows about
          twice as fast, and the plain float weights are released;
        - `quantize="int8"`: weight-only int8 with a float16 scale per group of 32 input
          columns (`int8_groups`); float weights released, activations in the model's
          dtype (float32 keeps the most precision and is as fast on the CPU);
        - `quantize="q8_0"`: the same weights, decode activations rounded to int8 per
          group of 32 as well (llama.cpp's q8_0 x q8_0, `kernels.Proj`).

        Released, the model is for inference only: its parameters are on `meta`, and
        `state_dict()` rebuilds them from the prepared form (int8: dequantized).
        """
        if self._released:
            if quantize != self.quantize:
                raise ValueError(f"the weights were already prepared (quantize={self.quantize})")
            return self
        act = self.dtype
        pack = pack and quantize is None and can_pack(act, self.device)
        release = pack or quantize is not None
        dense: dict[str, tuple[Proj, int, int]] = {}

        def build(names: list[str], linears: list[nn.Linear]) -> Proj:
            if release:
                weight = torch.cat([lin.weight.detach() for lin in linears])
            else:
                weight = _fuse(linears)
            splits = tuple(lin.out_features for lin in linears)
            proj = Proj(weight, quantize=quantize, act_dtype=act, pack=pack, splits=splits)
            if release:
                offset = 0
                for name, lin in zip(names, linears, strict=True):
                    dense[name + ".weight"] = (proj, offset, offset + lin.out_features)
                    offset += lin.out_features
                _release(linears)
            return proj

        with torch.no_grad():
            for i, block in enumerate(self.layers):
                a, f = block.attention, block.feed_forward
                pa, pf = f"layers.{i}.attention.", f"layers.{i}.feed_forward."
                a.qkv = build([pa + "wq", pa + "wk", pa + "wv"], [a.wq, a.wk, a.wv])
                a.o = build([pa + "wo"], [a.wo])
                f.w13 = build([pf + "w1", pf + "w3"], [f.w1, f.w3])
                f.down = build([pf + "w2"], [f.w2])
            self._out = build(["output"], [self.output])
        self.quantize = quantize
        self._released = release
        self._dense = dense
        self._prepared_for = self._signature()
        return self

    @staticmethod
    def _dense_state_dict(module: Transformer, state_dict, prefix: str, local_metadata) -> None:
        """state_dict hook: released weights come back from their prepared form."""
        built: dict[int, torch.Tensor] = {}
        for key, (proj, a, b) in module._dense.items():
            if id(proj) not in built:
                built[id(proj)] = proj.dense()
            state_dict[prefix + key] = built[id(proj)][a:b]

    def weight_bytes(self) -> int:
        """Bytes of weights a decode step reads (all but the embedding table)."""
        if self._prepared_for is None:
            self.prepare()
        projs = [self._out]
        for block in self.layers:
            projs += [block.attention.qkv, block.attention.o]
            projs += [block.feed_forward.w13, block.feed_forward.down]
        norms = sum(p.numel() * p.element_size() for n, p in self.named_parameters() if "norm" in n)
        return sum(p.nbytes() for p in projs) + norms

    def _use_fused(self) -> bool:
        if self._released:
            if self.dtype != self._prepared_for[1] and self.quantize is None:
                raise RuntimeError("the weights were packed in another dtype: reload instead")
            return True
        if not self.fused or (torch.is_grad_enabled() and self.output.weight.requires_grad):
            return False
        if self._prepared_for != self._signature():
            self.prepare()
        return True

    def new_cache(
        self, max_batch_size: int, max_seq_len: int | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        seq = max_seq_len or self.args.max_seq_len
        if seq > self.args.max_seq_len:
            raise ValueError(f"cache length {seq} exceeds the context {self.args.max_seq_len}")
        attn = self.layers[0].attention
        return KVCache(
            self.args.n_layers,
            max_batch_size,
            attn.n_kv,
            seq,
            attn.head_dim,
            dtype=dtype or self.cache_dtype,
            device=self.device,
        )

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.par.all_gather_last(self.tok_embeddings(tokens))

    def _logits(self, h: torch.Tensor, fused: bool) -> torch.Tensor:
        if fused:
            assert self._out is not None
            n = self.norm
            out = self._out(rms_norm(h, n))
        else:
            out = small_linear(self.norm(h), self.output.weight)
        return self.par.all_gather_last(out).float()

    def _check_len(self, seqlen: int) -> None:
        if seqlen > self.args.max_seq_len:
            raise ValueError(
                f"{seqlen} positions exceed the model's context length {self.args.max_seq_len}"
            )

    def _run(self, h: torch.Tensor, step: _Step, fused: bool) -> torch.Tensor:
        if fused:
            for layer in self.layers:
                h = layer.fused_forward(h, step)
        else:
            for layer in self.layers:
                h = layer(h, step)
        return h

    def _sequence_step(self, mode: str, seqlen: int, fused: bool, **kw: Any) -> _Step:
        if fused:
            cos, sin = self.cos_sin()
            # [T, 1, D]: broadcast over the heads of [B, T, H, D]
            return _Step(mode, cos=cos[:seqlen, None], sin=sin[:seqlen, None], **kw)
        return _Step(mode, freqs=self.freqs()[:seqlen], **kw)

    # -- entry points ------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] (float32) for whole sequences starting at position 0."""
        seqlen = tokens.shape[1]
        self._check_len(seqlen)
        fused = self._use_fused()
        step = self._sequence_step("full", seqlen, fused)
        return self._logits(self._run(self._embed(tokens), step, fused), fused)

    def prefill(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        slots: torch.Tensor | slice,
        last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run prompts [B, T] (right-padded) from position 0 into cache rows `slots`.

        Returns float32 logits at index `last[b]` of each row ([B, vocab]), or at every
        position ([B, T, vocab]) when `last` is None.
        """
        bsz, seqlen = tokens.shape
        if seqlen > cache.max_seq_len:
            raise ValueError(f"prompt of {seqlen} tokens exceeds the cache ({cache.max_seq_len})")
        fused = self._use_fused()
        step = self._sequence_step("prefill", seqlen, fused, cache=cache, slots=slots)
        h = self._run(self._embed(tokens), step, fused)
        if last is not None:
            # Only the last prompt position is needed to sample: skip the vocab projection
            # (the largest matmul) for the rest.
            h = h[torch.arange(bsz, device=h.device), last]
        return self._logits(h, fused)

    def decode(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        span: int | None = None,
        *,
        static: bool = False,
    ) -> torch.Tensor:
        """One token per cache row 0..B-1, row b at `positions[b]`; logits [B, vocab].

        Rows that hold no sequence may be fed anything: they only write their own row.
        `span` (max position + 1), when the caller knows it, saves a device sync.
        `static=True` attends over the whole cache under a mask, so every step has the
        same shapes and no host sync: what a CUDA graph captures (bench/engine_gpu.py).
        """
        bsz = tokens.shape[0]
        if static:
            span = cache.max_seq_len
        elif span is None:
            span = int(positions.max()) + 1
        if span > cache.max_seq_len:
            raise ValueError(f"position {span - 1} is beyond the cache ({cache.max_seq_len})")
        dev = tokens.device
        fused = self._use_fused()
        # On the CPU the whole step can be one C++ call (`_decode_plan`); it needs none of
        # what the operator-by-operator step is given below.
        plan = self._decode_plan(bsz, cache) if fused and not static else None
        step: _Step | None = None
        if plan is None:
            # Row b sees keys 0..positions[b]; shared by every layer. A single row sees the
            # whole span (the caller's span is its position + 1): no mask at all.
            mask = None
            if bsz > 1 or static:
                ar = torch.arange(span, device=dev)
                mask = (ar.view(1, 1, 1, span) <= positions.view(bsz, 1, 1, 1)).contiguous()
            rows = torch.arange(bsz, device=dev)
            if fused:
                step = _Step(
                    "decode", cache=cache, rows=rows, positions=positions, mask=mask, span=span
                )
                step.cos, step.sin = self._decode_tables(positions)
            else:
                freqs = self.freqs()[positions].unsqueeze(1)  # [B, 1, D/2]
                step = _Step(
                    "decode",
                    freqs=freqs,
                    cache=cache,
                    rows=rows,
                    positions=positions,
                    mask=mask,
                    span=span,
                )

        def run() -> torch.Tensor:
            if plan is not None:
                return plan.step(tokens.long(), positions.long(), cache.kv)
            h = self._run(self._embed(tokens.view(bsz, 1)), step, fused)
            return self._logits(h[:, 0], fused)

        chooser = None
        if dev.type == "cpu":
            chooser = self.threads if plan is None else self.plan_threads
        if chooser is None:
            return run()
        most = torch.get_num_threads()
        n = chooser.choose(bsz, most)
        if n != most:
            torch.set_num_threads(n)
        try:
            t0 = time.perf_counter()
            logits = run()
            chooser.record(bsz, n, time.perf_counter() - t0)
        finally:
            if n != most:
                torch.set_num_threads(most)
        return logits

    # weight kinds and dtypes as cpu_kernels' DecodePlan numbers them
    _PLAN_KINDS = {"int8": 3, "q8_0": 4}
    _PLAN_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

    def _decode_plan(self, bsz: int, cache: KVCache) -> Any:
        """The whole decode step as one C++ call (`cpu_kernels`' DecodePlan) where it
        applies: CPU, one rank, up to SMALL_ROWS rows, plain float or int8 weights (not
        oneDNN's packed ones), widths that are multiples of 32; None elsewhere, and the
        step runs operator by operator."""
        if (
            self.device.type != "cpu"
            or self.par.world_size != 1
            or bsz > SMALL_ROWS
            or cache.kv[0].dtype not in self._PLAN_DTYPES
            or not fused_decode_available()
        ):
            return None
        key = (self._prepared_for, self.quantize)
        if self._plan is not None and self._plan[0] == key:
            return self._plan[1]
        self._plan = (key, self._build_plan())
        return self._plan[1]

    def _build_plan(self) -> Any:
        args, act = self.args, self.dtype
        attn = self.layers[0].attention
        hq, hkv, hd = attn.n_heads, attn.n_kv, attn.head_dim
        hidden = self.layers[0].feed_forward.w1.out_features
        if act not in self._PLAN_DTYPES or args.dim % 32 or hidden % 32 or (hq * hd) % 32:
            return None
        projs = []
        for block in self.layers:
            a, f = block.attention, block.feed_forward
            projs.append((block, [a.qkv, a.o, f.w13, f.down]))
        kinds = {p.kind for _, ps in projs for p in ps} | {self._out.kind}
        if len(kinds) != 1:
            return None
        [kind] = kinds
        if kind == "plain":
            weight_kind = self._PLAN_DTYPES.get(self._out.weight.dtype)
        else:
            weight_kind = self._PLAN_KINDS.get(kind)
        if weight_kind is None:  # oneDNN's packed matrices
            return None
        if kind == "q8_0" and not all(p.blocks for _, ps in projs for p in [*ps, self._out]):
            return None  # the plan takes q8_0 in int8_groups.pack's blocks only
        empty = torch.empty(0)

        def mats(p: Proj) -> list[torch.Tensor]:
            scale = p.scale if p.scale is not None else empty
            return [p.weight.contiguous(), scale]

        tensors: list[torch.Tensor] = []
        for block, ps in projs:
            tensors += [block.attention_norm.weight.float().contiguous()]
            tensors += [block.ffn_norm.weight.float().contiguous()]
            for p in ps:
                tensors += mats(p)
        cos, sin = self.cos_sin()
        tensors += [self.norm.weight.float().contiguous(), *mats(self._out)]
        tensors += [self.tok_embeddings.weight.contiguous(), cos.contiguous(), sin.contiguous()]
        dims = [args.dim, hq, hkv, hd, hidden, self._out.shape[0], args.n_layers]
        mod = cpu_kernels.kernel()
        return mod.DecodePlan(weight_kind, self._PLAN_DTYPES[act], dims, args.norm_eps, tensors)

    def _decode_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin `[B, 1, H, D]` for one rotation over a decode step's q, k and v heads:
        the query heads carry the attention scale 1/sqrt(D), the value heads cos 1, sin 0."""
        attn = self.layers[0].attention
        hq, hkv, hd = attn.n_heads, attn.n_kv, attn.head_dim
        cos, sin = self.cos_sin()
        c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)  # [B, 1, D]
        bsz = positions.shape[0]
        scale = 1.0 / math.sqrt(hd)
        ones = torch.ones(bsz, hkv, hd, device=c.device)
        zeros = torch.zeros(bsz, hkv, hd, device=c.device)
        cos_all = torch.cat([(c * scale).expand(-1, hq, -1), c.expand(-1, hkv, -1), ones], 1)
        sin_all = torch.cat([(s * scale).expand(-1, hq, -1), s.expand(-1, hkv, -1), zeros], 1)
        return cos_all.unsqueeze(1), sin_all.unsqueeze(1)


def init_weights(model: Transformer, seed: int = 0, std: float = 0.02) -> Transformer:
    """Deterministic random weights (tests, benchmarks, the demo's starting point)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model
