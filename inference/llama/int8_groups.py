"""Weight-only int8 with one scale per group of input columns (llama.cpp's Q8_0 layout:
groups of 32, float16 scales), and the CPU kernel that multiplies a few rows by it.

`w[o, i] ~= q[o, i] * scale[o, i // group]`, `|q| <= 127`, symmetric. A group's scale
follows its own largest weight, so one large weight costs only its 31 neighbours their
precision, not its whole output row: on the 1B random-weight shape the logits move
3.9% of the largest float32 logit instead of 6.1% with one scale per row (measured,
float32 activations; see README).

ATen has no kernel for group scales (`_weight_int8pack_mm` takes one scale per row), so
`cpu_kernels` builds a small C++ one: per output row it converts a group's 32 weights
to float once, multiplies them with each activation row and applies the group's scale
once per group, reading the int8 matrix once per call, split by output rows over the
intra-op threads. Where it cannot be built (no compiler, a CPU without AVX2) or on a
GPU, and for many rows (prefill), `matmul` dequantizes the matrix into the activations'
dtype and calls `F.linear`: the same products, slower for decode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .cpu_kernels import kernel

GROUP = 32
# Decode passes with at most this many rows use the kernel; more rows dequantize once.
KERNEL_ROWS = 16


def quantize(w: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """`(q, scale)`: int8 `[out, in]` and float16 `[out, in // group]`, with
    `|w - q * scale| <= scale / 2` for every weight (the scale is rounded to float16
    first, and the weights are rounded against the rounded scale)."""
    out_f, in_f = w.shape
    # Every LLaMA width (and its tensor-parallel shards) is a multiple of 32; a toy width
    # that is not gets the largest group that divides it, and the dequantizing path.
    group = math.gcd(in_f, group)
    wg = w.detach().float().reshape(out_f, in_f // group, group)
    amax = wg.abs().amax(dim=2)
    # float16 holds the scale, at least its smallest normal number (2^-14: below it the
    # rounding of a subnormal scale could exceed half a step). Rounded to nearest, a scale
    # is at most 2^-11 below amax / 127: the largest weight lands within 127.07 steps,
    # clamped to 127, still within half a step.
    scale = (amax / 127.0).clamp(min=2.0**-14).to(torch.float16)
    q = torch.round(wg / scale.float()[..., None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(out_f, in_f).contiguous(), scale.contiguous()


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out_f, in_f = q.shape
    groups = scale.shape[1]
    w = q.reshape(out_f, groups, in_f // groups).float() * scale.float()[..., None]
    return w.reshape(out_f, in_f).to(dtype)


def matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`x @ dequantize(q, scale).T` in x's dtype (float32 accumulation in the kernel)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    group = shape[-1] // scale.shape[1]
    fits = x.device.type == "cpu" and x2.shape[0] <= KERNEL_ROWS and group == GROUP
    mod = kernel() if fits else None
    if mod is None:
        return F.linear(x, dequantize(q, scale, x.dtype))
    out = mod.int8_group_mm(x2.float(), q, scale, group)
    return out.to(x.dtype).view(*shape[:-1], q.shape[0])


# -- q8_0: the same weights in 16-row blocks, multiplied by activations rounded to int8 ------
#
# `cpu_kernels.q8_pack`: for each block of 16 output rows and each group of 32 columns, 8
# vectors of 64 bytes, lane i of vector j holding columns 4j..4j+3 of the group in row i
# of the block, as q + 128; the block's scales [16] per group beside. The products then
# run 16 output rows to a vector (no sums across lanes), llama.cpp's q8_0 x q8_0 with the
# scales applied once per group and 16 rows.


def pack(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`quantize`'s `(q, scale)` in q8_pack's blocks (`[ceil(O/16), K/32, 512]` uint8,
    `[ceil(O/16), K/32, 16]` float16), or None where the kernel or the layout does not
    apply (no kernel here, another device, groups other than 32)."""
    if q.device.type != "cpu" or q.shape[1] != GROUP * scale.shape[1]:
        return None
    mod = kernel()
    if mod is None:
        return None
    pw, ps = mod.q8_pack(q, scale)
    return pw, ps


def unpack(pw: torch.Tensor, ps: torch.Tensor, out_f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`pack`'s blocks back to `(q, scale)` (the first `out_f` rows)."""
    nb, groups, _ = pw.shape
    q = pw.view(nb, groups, 8, 16, 4).permute(0, 3, 1, 2, 4).reshape(nb * 16, groups * GROUP)
    q = (q[:out_f] ^ 0x80).view(torch.int8)
    scale = ps.permute(0, 2, 1).reshape(nb * 16, groups)[:out_f]
    return q.contiguous(), scale.contiguous()


def matmul_q8(x: torch.Tensor, pw: torch.Tensor, ps: torch.Tensor, out_f: int) -> torch.Tensor:
    """q8_0: up to KERNEL_ROWS rows of x rounded to int8 per group of 32 too and multiplied
    in integers (`cpu_kernels.q8_packed_mm`, llama.cpp's q8_0 x q8_0); more rows (prefill)
    as weight-only int8 (`x @ dequantize(...).T`), as other devices do."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    mod = kernel() if x.device.type == "cpu" and x2.shape[0] <= KERNEL_ROWS else None
    if mod is None:
        return F.linear(x, dequantize(*unpack(pw, ps, out_f), x.dtype))
    out = mod.q8_packed_mm(x2.float(), pw, ps, out_f)
    return out.to(x.dtype).view(*shape[:-1], out_f)
