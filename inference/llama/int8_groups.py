"""Weight-only int8 with one scale per group of input columns (llama.cpp's Q8_0 layout:
groups of 32, float16 scales), and the CPU kernel that multiplies a few rows by it.

`w[o, i] ~= q[o, i] * scale[o, i // group]`, `|q| <= 127`, symmetric. A group's scale
follows its own largest weight, so one large weight costs only its 31 neighbours their
precision, not its whole output row: on the 1B random-weight shape the logits move
3.9% of the largest float32 logit instead of 6.1% with one scale per row (measured,
float32 activations; see README).

ATen has no kernel for group scales (`_weight_int8pack_mm` takes one scale per row), so
this module builds a small C++ one at first use with `torch.utils.cpp_extension`
(AVX2 + FMA + F16C, cached under torch's extensions folder): per output row it
converts 8 weights at a time to float, multiplies them with each activation row and
applies the group's scale once per group, reading the int8 matrix once per call, split
by output rows over the intra-op threads. Where it cannot be built (no compiler, a CPU
without AVX2) or on a GPU, and for many rows (prefill), `matmul` dequantizes the matrix
into the activations' dtype and calls `F.linear`: the same products, slower for decode.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

GROUP = 32
# Decode passes with at most this many rows use the kernel; more rows dequantize once.
KERNEL_ROWS = 16

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

static inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// RB rows of x against output row o, accumulators held in registers (RB <= 4).
template <int RB>
static inline void rows_block(const float* xp, const int8_t* qrow, const uint16_t* srow,
                              int64_t K, int64_t G, int64_t O, int64_t o, float* op) {
  __m256 tot[RB];
  for (int r = 0; r < RB; ++r) tot[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    // The group's 32 weights as four float vectors, converted once for the RB rows.
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qrow + g * 32));
    const __m128i lo = _mm256_castsi256_si128(b), hi = _mm256_extracti128_si256(b, 1);
    const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    const __m256 w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    const __m256 w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
    const __m256 s = _mm256_set1_ps(_cvtsh_ss(srow[g]));
    const float* xg = xp + g * 32;
    for (int r = 0; r < RB; ++r) {
      const float* xr = xg + r * K;
      __m256 p0 = _mm256_mul_ps(w0, _mm256_loadu_ps(xr));
      __m256 p1 = _mm256_mul_ps(w1, _mm256_loadu_ps(xr + 8));
      p0 = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), p0);
      p1 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), p1);
      tot[r] = _mm256_fmadd_ps(s, _mm256_add_ps(p0, p1), tot[r]);
    }
  }
  for (int r = 0; r < RB; ++r) op[r * O + o] = hsum(tot[r]);
}

// out[r, o] = sum_g scale[o, g] * sum_{k in g} q[o, k] * x[r, k]
torch::Tensor int8_group_mm(torch::Tensor x, torch::Tensor q, torch::Tensor scale, int64_t group) {
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && scale.dim() == 2, "2-d tensors expected");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x must be float32");
  TORCH_CHECK(q.scalar_type() == torch::kInt8, "q must be int8");
  TORCH_CHECK(scale.scalar_type() == torch::kFloat16, "scale must be float16");
  TORCH_CHECK(group == 32, "the kernel takes groups of 32");
  const int64_t R = x.size(0), K = x.size(1), O = q.size(0), G = K / group;
  TORCH_CHECK(q.size(1) == K && K % group == 0 && scale.size(0) == O && scale.size(1) == G,
              "shapes do not match");
  x = x.contiguous(); q = q.contiguous(); scale = scale.contiguous();
  auto out = torch::empty({R, O}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, O, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const int8_t* qrow = qp + o * K;
      const uint16_t* srow = sp + o * G;
      for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const float* xr = xp + r0 * K;
        float* orow = op + r0 * O;
        switch (std::min<int64_t>(4, R - r0)) {
          case 4: rows_block<4>(xr, qrow, srow, K, G, O, o, orow); break;
          case 3: rows_block<3>(xr, qrow, srow, K, G, O, o, orow); break;
          case 2: rows_block<2>(xr, qrow, srow, K, G, O, o, orow); break;
          default: rows_block<1>(xr, qrow, srow, K, G, O, o, orow); break;
        }
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("int8_group_mm", &int8_group_mm); }
"""

_lock = threading.Lock()
_kernel = None  # the built module, False when it cannot be built here
_disabled = os.environ.get("LLAMA_INT8_KERNEL", "1") == "0"  # force the fallback


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def kernel():
    """The compiled module, or None where it cannot be built (then `matmul` dequantizes)."""
    global _kernel
    if _kernel is None:
        with _lock:
            if _kernel is None:
                _kernel = _build()
    return _kernel or None


def _build():
    if _disabled or not {"avx2", "fma", "f16c"} <= _cpu_flags():
        return False
    try:
        from torch.utils.cpp_extension import load_inline

        return load_inline(
            name="llama_int8_groups_v4",
            cpp_sources=[_SOURCE],
            extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no headers: the slower path still works
        logger.warning("int8 group kernel not built (%s); dequantizing instead", exc)
        return False


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
