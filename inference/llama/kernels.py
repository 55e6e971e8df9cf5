"""The projections of the inference path: one weight (fused or not), in the precision
the model runs in, multiplied by a few rows (decode) or many (prefill) as fast as ATen
allows on the device.

A `Proj` is derived data built from a model's parameters at load time (see
`Transformer.prepare`); it never enters a state dict. Its kinds:

- "plain": a float32, bfloat16 or float16 matrix `[out, in]`;
- "packed": the same matrix reordered once into oneDNN's blocked layout (CPU, float32
  where the fused decode step (`cpu_kernels.DecodePlan`) does not run; bfloat16 too
  where `cpu_kernels`' AVX-512 build does not run), multiplied by oneDNN's
  linear: it reads the weight at up to twice the rate of `F.linear` with one row and
  2-3x with 8 rows here;
- "int8": weight-only int8 with one float16 scale per group of 32 input columns of each
  output row (symmetric, llama.cpp's Q8_0 layout; see `int8_groups`), multiplied by a
  small C++ kernel that reads the int8 matrix once and accumulates in float32, without
  a dequantized copy. The activations stay in the model's dtype (float32 by default).
- "q8_0": the same int8 weights, held on the CPU in 16-row blocks (`int8_groups.pack`),
  and in passes of up to SMALL_ROWS rows (decode, short prompts) the activations rounded
  to int8 per group of 32 as well, multiplied in integers (`cpu_kernels.q8_packed_mm`,
  llama.cpp's q8_0 x q8_0): faster than "int8" for a few rows, at the cost of the
  activations' rounding (logits within int8's bound of float32, but not equal to
  "int8"'s). Prefill and other devices take "int8"'s path (from the blocks unpacked).

Which ATen call is fast for a few rows depends on the dtype, measured on this CPU (AMD
EPYC, AVX-512 with BF16, 2 cores; 5632x2048 weights, see README):

- float32: `F.linear` with one row is MKL's gemv on one core; splitting the weight into
  row blocks multiplied as a batch (`small_linear`) lets every thread read its own block
  (about 1.8x), with the same dot products in the same order (bitwise equal);
- bfloat16 where the AVX-512 kernels do not run: packed for oneDNN, which already
  splits the work (where oneDNN cannot pack it, no AVX-512 BF16, as below);
- float16, and bfloat16 where the AVX-512 kernels run (faster than oneDNN's packed
  linear there, see `can_pack`) or where oneDNN cannot pack it: one row goes to
  `cpu_kernels.half_mv`, which streams the weight once at 93-97%
  of the read bandwidth measured beside it (ATen's one-row path: 66-75%, 1B layer shapes,
  AVX2 host; where torch runs its AVX-512 code ATen's float16 row is the faster one and
  takes float16, `aten_one_row_float16`); with several rows ATen has only a slow path
  here (about 8x the one-row time for 8 rows), so 2-16 rows go to `cpu_kernels.half_mm`;
- int8: `int8_groups.matmul` (its kernel for up to 16 rows, dequantized otherwise).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from . import cpu_kernels, int8_groups

# Decode passes with at most this many rows take the few-row paths on the CPU.
SMALL_ROWS = 16

# What the jobs worker can be set to (portal/settings.py's JOBS_QUANTIZE_MODES mirrors
# it, and a test holds the two equal).
QUANT_MODES = ("int8", "q8_0")  # what Llama.load and the command line accept, too


def can_pack(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether oneDNN can hold a weight of this dtype in its own layout here."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.float32:
        # Where the fused decode step runs (`cpu_kernels.DecodePlan`), it multiplies the
        # plain float32 matrices itself, in the same parallel region as the rest of the
        # step; oneDNN's packed layout would keep every step on ATen's path.
        return not fused_decode_available()
    # bfloat16: where the AVX-512 kernels run, half_mv/half_mm are the faster ones (1B
    # layer shapes, 2 threads: 1 row 11.2 against oneDNN's 21.9 ms, 8 rows 18.0 against
    # 35.6; see README), so the weights stay plain for them.
    return (
        dtype == torch.bfloat16
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        and not avx512_kernels()
    )


def fused_decode_available() -> bool:
    """Whether CPU decode steps of up to SMALL_ROWS rows can run as one C++ call
    (`cpu_kernels`' DecodePlan; LLAMA_FUSED_DECODE=0 turns it off for A/B runs)."""
    if os.environ.get("LLAMA_FUSED_DECODE", "1") == "0":
        return False
    mod = cpu_kernels.kernel()
    return mod is not None and hasattr(mod, "DecodePlan")


def avx512_kernels() -> bool:
    """Whether the kernels loaded here are the AVX-512 build (`cpu_kernels`)."""
    mod = cpu_kernels.kernel()
    return mod is not None and mod.isa() == "avx512"


def small_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, w)` for a few rows of x, fast on a multi-core CPU.

    With a handful of rows a linear layer is a matrix-vector product bound by reading w,
    and the BLAS call behind F.linear reads it from one core (measured here: 17 GB/s with
    1 or 2 threads). Viewing w as row blocks multiplied as a batch lets ATen give each
    thread its own blocks: the same dot products in the same order (bitwise equal).
    Elsewhere (GPU, half precision, one thread, many rows) it is plain F.linear.
    """
    threads = torch.get_num_threads()
    rows = x.numel() // x.shape[-1]
    out_f, in_f = w.shape
    if (
        threads < 2
        or rows > SMALL_ROWS
        or x.device.type != "cpu"
        or w.dtype != torch.float32
        or out_f % threads
    ):
        return F.linear(x, w)
    x2 = x.reshape(1, rows, in_f).expand(threads, rows, in_f)
    out = torch.bmm(x2, w.view(threads, out_f // threads, in_f).transpose(1, 2))
    return out.transpose(0, 1).reshape(*x.shape[:-1], out_f)


@functools.cache  # asked for every float16 projection of every decode step
def aten_one_row_float16() -> bool:
    """Whether ATen's own one-row float16 kernel beats `half_mv` here: where torch runs its
    AVX-512 code and `half_mv` is the AVX2 build (an AMD EPYC with AVX-512 BF16, 8 layers
    of the 100M shape from memory, 2 threads: 37.6 against 22.4 GB/s; 1B: 31.8 against
    28.5), not on an AVX2 host (ATen 66-75% of the read bandwidth, half_mv 93-97%) and
    not where the AVX-512 build runs (1B layer shapes: 10.8 against ATen's 18.5 ms).
    bfloat16 stays with half_mv either way (AVX-512 host: 27.6 against 19.7 GB/s on 1B)."""
    if avx512_kernels():
        return False
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def half_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, w)` for float16/bfloat16 weights on the CPU, float32 products and sums
    as ATen's: one row goes to `cpu_kernels.half_mv` (any width; float16 to ATen where
    `aten_one_row_float16`), 2 to SMALL_ROWS rows to `cpu_kernels.half_mm` (widths a
    multiple of 32), the rest to ATen's GEMM."""
    rows = x.numel() // x.shape[-1]
    if x.device.type != "cpu" or rows > SMALL_ROWS or (rows > 1 and x.shape[-1] % 32):
        return F.linear(x, w)
    if rows == 1 and w.dtype == torch.float16 and aten_one_row_float16():
        return F.linear(x, w)
    mod = cpu_kernels.kernel()
    if mod is None:
        return F.linear(x, w)
    x2 = x.reshape(rows, x.shape[-1]).float()
    out = mod.half_mv(x2, w) if rows == 1 else mod.half_mm(x2, w)
    return out.to(x.dtype).view(*x.shape[:-1], w.shape[0])


class Proj:
    """One (possibly fused) projection, ready for the inference path."""

    __slots__ = ("blocks", "dtype", "kind", "scale", "shape", "splits", "weight")

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        quantize: str | None = None,
        act_dtype: torch.dtype | None = None,
        pack: bool = False,
        splits: tuple[int, ...] = (),
    ):
        self.splits = splits  # output widths of the parts when fused
        self.shape = weight.shape
        self.blocks = False  # q8_0: weight and scale in int8_groups.pack's blocks
        self.dtype = weight.dtype
        if quantize is None and pack:
            self.kind = "packed"
            # The batch-size hint only steers oneDNN's choice of layout; any row count
            # works. 1: decode is what the packing is for.
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 1)
            self.scale = None
        elif quantize is None:
            self.kind = "plain"
            self.weight = weight
            self.scale = None
        elif quantize in ("int8", "q8_0"):
            self.kind = quantize
            self.weight, self.scale = int8_groups.quantize(weight)
            int8_groups.kernel()  # built (or found in the cache) at load, not on a job
            self.dtype = act_dtype or weight.dtype
            packed = int8_groups.pack(self.weight, self.scale) if quantize == "q8_0" else None
            if packed is not None:
                self.weight, self.scale = packed
                self.blocks = True
        else:
            modes = ", ".join(QUANT_MODES)
            raise ValueError(f"unknown quantization {quantize!r}; one of {modes}")

    def nbytes(self) -> int:
        if self.blocks:  # the rows as packed, up to 15 rows of padding
            return self.weight.numel() + self.scale.numel() * self.scale.element_size()
        n = self.shape.numel() * self.weight.element_size()
        if self.scale is not None:
            n += self.scale.numel() * self.scale.element_size()
        return n

    def dense(self) -> torch.Tensor:
        """The plain `[out, in]` matrix (int8: dequantized, in the activations' dtype)."""
        if self.kind == "packed":
            return self.weight.to_dense()
        if self.blocks:
            q, scale = int8_groups.unpack(self.weight, self.scale, self.shape[0])
            return int8_groups.dequantize(q, scale, self.dtype)
        if self.kind in ("int8", "q8_0"):
            return int8_groups.dequantize(self.weight, self.scale, self.dtype)
        return self.weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "packed":
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        if self.blocks:
            return int8_groups.matmul_q8(x, self.weight, self.scale, self.shape[0])
        if self.kind in ("int8", "q8_0"):  # q8_0 without the kernel: as int8
            return int8_groups.matmul(x, self.weight, self.scale)
        w = self.weight
        if w.dtype == torch.float32:
            return small_linear(x, w)
        return half_linear(x, w)
