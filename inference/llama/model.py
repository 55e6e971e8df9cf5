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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .parallel import Parallel

_SINGLE = Parallel()

# Decode passes with at most this many rows use `small_linear` on the CPU.
_SMALL_ROWS = 16


def small_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, w)` for a few rows of x, fast on a multi-core CPU.

    With a handful of rows a linear layer is a matrix-vector product bound by reading w,
    and the BLAS call behind F.linear reads it from one core (measured here: 17 GB/s with
    1 or 2 threads). Viewing w as T row blocks and multiplying them as a batch lets ATen
    give each thread its own block: 31 GB/s on 2 cores, the same dot products in the same
    order (the results are bitwise equal). Elsewhere (GPU, half precision, one thread,
    many rows) it is plain F.linear.
    """
    threads = torch.get_num_threads()
    rows = x.numel() // x.shape[-1]
    out_f, in_f = w.shape
    if (
        threads < 2
        or rows > _SMALL_ROWS
        or x.device.type != "cpu"
        or w.dtype != torch.float32
        or out_f % threads
    ):
        return F.linear(x, w)
    x2 = x.reshape(1, rows, in_f).expand(threads, rows, in_f)
    out = torch.bmm(x2, w.view(threads, out_f // threads, in_f).transpose(1, 2))
    return out.transpose(0, 1).reshape(*x.shape[:-1], out_f)


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


class KVCache:
    """Preallocated keys and values, `[rows, kv_heads, max_seq_len, head_dim]` per layer.

    Rows are the "slots" of a batch decoder; the layout keeps one row's positions contiguous
    so decode attention reads `k[:B, :, :T]` as a view, without copying the cache.
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
        shape = (max_batch_size, kv_heads, max_seq_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class _Step:
    """What one forward pass needs besides the activations (shared by all layers)."""

    __slots__ = ("cache", "freqs", "mask", "mode", "positions", "rows", "slots", "span")

    def __init__(self, mode: str, freqs: torch.Tensor, **kw: Any):
        self.mode = mode
        self.freqs = freqs
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
        # Grouped-query attention without repeating the cache: the `rep` query heads of a
        # group share one key head, so fold them into the matmul's row dimension.
        q = q.view(bsz, self.n_kv, self.rep, self.head_dim)
        scores = torch.matmul(q, keys.transpose(-1, -2)).float()
        scores = scores * (1.0 / math.sqrt(self.head_dim)) + step.mask
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
        # The RoPE table is derived data, not a parameter: built lazily on the weights'
        # device so a model made on the meta device and loaded with assign=True needs no
        # extra step, and it never enters state_dict.
        self._freqs: torch.Tensor | None = None

    # -- helpers -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.output.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.output.weight.dtype

    def freqs(self) -> torch.Tensor:
        dev = self.device
        if self._freqs is None or self._freqs.device != dev:
            self._freqs = rope_table(
                self.args.head_dim, self.args.max_seq_len, self.args.rope_theta, device=dev
            )
        return self._freqs

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
            dtype=dtype or self.dtype,
            device=self.device,
        )

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.par.all_gather_last(self.tok_embeddings(tokens))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.par.all_gather_last(small_linear(self.norm(h), self.output.weight)).float()

    def _check_len(self, seqlen: int) -> None:
        if seqlen > self.args.max_seq_len:
            raise ValueError(
                f"{seqlen} positions exceed the model's context length {self.args.max_seq_len}"
            )

    # -- entry points ------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] (float32) for whole sequences starting at position 0."""
        seqlen = tokens.shape[1]
        self._check_len(seqlen)
        step = _Step("full", self.freqs()[:seqlen])
        h = self._embed(tokens)
        for layer in self.layers:
            h = layer(h, step)
        return self._logits(h)

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
        step = _Step("prefill", self.freqs()[:seqlen], cache=cache, slots=slots)
        h = self._embed(tokens)
        for layer in self.layers:
            h = layer(h, step)
        if last is not None:
            # Only the last prompt position is needed to sample: skip the vocab projection
            # (the largest matmul) for the rest.
            h = h[torch.arange(bsz, device=h.device), last]
        return self._logits(h)

    def decode(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        span: int | None = None,
    ) -> torch.Tensor:
        """One token per cache row 0..B-1, row b at `positions[b]`; logits [B, vocab].

        Rows that hold no sequence may be fed anything: they only write their own row.
        `span` (max position + 1), when the caller knows it, saves a device sync.
        """
        bsz = tokens.shape[0]
        if span is None:
            span = int(positions.max()) + 1
        if span > cache.max_seq_len:
            raise ValueError(f"position {span - 1} is beyond the cache ({cache.max_seq_len})")
        ar = torch.arange(span, device=tokens.device)
        # Additive mask: row b sees keys 0..positions[b]; shared by every layer.
        mask = torch.zeros(bsz, 1, 1, span, device=tokens.device)
        mask.masked_fill_(ar.view(1, 1, 1, span) > positions.view(bsz, 1, 1, 1), float("-inf"))
        step = _Step(
            "decode",
            self.freqs()[positions].unsqueeze(1),  # [B, 1, D/2]
            cache=cache,
            rows=torch.arange(bsz, device=tokens.device),
            positions=positions,
            mask=mask,
            span=span,
        )
        h = self._embed(tokens.view(bsz, 1))
        for layer in self.layers:
            h = layer(h, step)
        return self._logits(h[:, 0])


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
