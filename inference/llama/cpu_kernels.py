"""Small C++ CPU kernels for the decode step's few-row products, where ATen has no fast
path (AVX2 hosts) or a slower one (the AVX-512 VM), in two builds of one source chosen at
run time by the CPU's flags:

- the AVX2 build (`-mavx2 -mfma -mf16c`), every host with AVX2 (CI's may be AVX2-only);
- the AVX-512 build (also `-mavx512f/bw/vl/dq/bf16/vnni`), built and loaded only where
  /proc/cpuinfo lists avx512f, avx512bw, avx512vl, avx512dq, avx512_bf16 and
  avx512_vnni; `LLAMA_CPU_KERNELS_ISA=avx2` keeps the AVX2 build there (A/B runs). Its
  entry points hand the work to 16-lane versions (`#ifdef __AVX512F__` in the source).
  `kernel()` gives the chosen build; `module(isa)` either (the tests take each the
  host runs, so an AVX2 host tests one build and this VM both).

The kernels:

- `int8_group_mm(x, q, scale, 32)`: weight-only int8 with a float16 scale per 32 input
  columns (see `int8_groups`). AVX-512: each weight converted and multiplied by its
  group's scale once (int8 x float16 is exact in float32), then one FMA per activation
  row, in the tiles described under `half_mm`;
- `half_mv(x, w)`: float16 or bfloat16 weights against one float32 row (decode at
  batch 1), any width: four weight rows at a time against x held in L1, output rows
  handed to the threads in chunks from a shared counter (a descheduled thread on a
  shared machine takes fewer chunks instead of stalling the step). It streams the
  weights at 93-97% of the read bandwidth measured in the same run on the 1B layer
  shapes, ATen's one-row path at 66-75% (AVX2 host, 2 threads;
  `bench/engine_kernels.py`). AVX-512: the fused step's one-row loop (one weight row
  after another in memory order, 16 columns a step and a masked last step); a row
  whose values are all bfloat16 values (a bfloat16 model's) against bfloat16 weights
  goes through `vdpbf16ps` (pairs of bfloat16s into float32 sums: the same exact
  products, no conversion of the weights);
- `q8_pack(q, scale)` and `q8_packed_mm(x, blocks, scales, O)`: the same int8 weights in
  blocks of 16 output rows (for each group of 32 columns, 8 vectors of 64 bytes, lane i
  holding 4 columns of row i), against 1-16 rows of activations rounded to int8 per
  group of 32 (llama.cpp's q8_0 x q8_0: exact int32 sums per group, then both scales in
  float32; the model's "q8_0" mode). Each 4 activation bytes are broadcast against 16
  rows' weights, so a row's sums need no reduction across lanes and the float32 work
  (conversion, scale, add) is done once per group for 16 rows. AVX-512: VNNI `vpdpbusd`
  on the weights + 128 as unsigned bytes, each group's 128 * sum(x) taken back out
  (exact). AVX2: `_mm256_maddubs_epi16` on |w| and sign-moved activations, the block as
  two halves of 8 rows;
- `rms_norm(x, w, eps)`: RMSNorm of a few float32 rows in one call (ATen's runs six
  operators, about 18 us for a 768-wide row; a 100M decode step has 17);
- `half_mm(x, w)`: float16 or bfloat16 weights against 2-16 float32 rows. ATen's
  few-row path for half-precision weights runs about one row at a time on an AVX2 CPU
  (8 rows: about 8x the one-row time); here tiles of 2 weight rows x 4 activation rows
  keep their sums in registers over width blocks whose activation rows stay in L1 (an
  11264x2048 float16 matrix, 8 rows, 2 threads: 4.6-5.3 ms against 5.9-6.8 for the
  former one-weight-row loop, quiet; 4.7-5.7 against 6.1-10.1 with one core kept
  busy). AVX-512: the fused step's tiles, 3 weight rows x up to 8 activation rows over
  the whole width (24 sums in registers, each reduced once; the activation rows read
  from L2), prefetching the next tile's weight rows. Products and sums in float32, as
  ATen's own.

AVX-512 against AVX2 on the AVX-512 VM (1B layer shapes, 2 layers, 2 threads,
2026-12-07 14:36, load 2.1; ms per pass, lower is better): float16 1 row 8.8 against
10.6 (ATen 18.5), 8 rows 14.2 against 23.8; bfloat16 1 row 8.5 against 10.9 (oneDNN
packed 15.8), 8 rows 14.8 against 29.0 (oneDNN packed 21.6); int8 weight-only 1 row
6.8 against 9.9, 8 rows 18.2 against 25.8; q8_0 1 row 3.6 against 8.3, 8 rows 12.0
against 20.0. (oneDNN's packed bfloat16 swung from 7.8 to 35 ms at 8 rows between
runs on this shared VM; the model A/B is in the README.)

`DecodePlan(kind, dtype, dims, eps, tensors)`: a whole CPU decode step of 1-16 rows in
one call, `plan.step(tokens, positions, cache.kv)` -> float32 logits (`Transformer.decode`
builds one from the prepared weights). A step of the 100M shape through ATen's operators
is about 280 calls (1,300 counting nested ones), each cut in a fixed share per thread
that waits for both; here it is one parallel region, a list of phases (embedding; per
layer RMSNorm, q/k/v, RoPE + cache write + attention per (row, kv head), o + residual,
RMSNorm, gate/up + SiLU * up, down + residual; RMSNorm, output), each phase's chunks
taken from a shared counter, a thread moving on once the phase's chunks are all done.
The products use the tiles below per weight kind (float32 as well: plain float32
weights, no oneDNN packing, where the plan runs). Values are rounded to the model's
dtype where the operator path rounds them.

`int8_group_mm`, `half_mm` and `q8_packed_mm` hand their output rows out in chunks of at
least 64 KiB of weights from a shared counter (`for_chunks`), as `half_mv` does, instead
of a fixed half per thread: with one core busy elsewhere the int8 kernel at 8 rows took
4.6-7.9 ms against 7.1-8.8 (quiet, 1 row: about 0.08 ms slower than fixed halves, the
price of the counter and of shorter streams). The fused step's products take chunks of
about 1 MiB and end each phase with 64 KiB ones (see `prod` in `DecodePlan::step`).

The step's elementwise work (RMSNorm's scaling, rounding to the model's dtype, residual
sums, SiLU * up) runs 8 lanes at a time with AVX2 instructions in both builds (`round8`
and the helpers after it); at 8 rows on the 1B shape it was a fifth of a float16 step
when it ran one value at a time. Its exp is a polynomial (`exp8`, about 1 ulp), held to
ATen's SiLU over the float range by the tests.

Built at first use by `torch.utils.cpp_extension` (OpenMP threads as torch's intra-op
count; cached under torch's extensions folder, about 40 s per build on the first load of
a machine). Where they cannot be built (no compiler, a CPU without AVX2,
`LLAMA_CPU_KERNELS=0`), `kernel()` is None and callers use ATen; where the AVX-512 build
fails to build, the AVX2 one is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <atomic>
#include <type_traits>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

static inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// x copied with a row stride of K + 16 floats: rows K * 4 bytes apart (a multiple of 4 KiB
// for LLaMA's widths) would all fall in the same L1 sets, and 8 rows plus the weight
// stream overflow its 8 ways (measured: 8 rows took 4x the time of 4).
static inline torch::Tensor padded_rows(const torch::Tensor& x) {
  auto xs = torch::empty({x.size(0), x.size(1) + 16}, x.options());
  xs.narrow(1, 0, x.size(1)).copy_(x);
  return xs;
}

// Output rows [0, O) in chunks of at least 16 rows and 64 KiB of weights, handed out from
// a shared counter, not a fixed share per thread: on a shared machine a descheduled thread
// takes fewer chunks instead of holding back the step (the others take its share).
template <typename F>
static inline void for_chunks(int64_t O, int64_t row_bytes, const F& body) {
  const int64_t rows_per_chunk =
      std::max<int64_t>(16, (65536 / std::max<int64_t>(row_bytes, 1) + 15) / 16 * 16);
  const int64_t chunks = (O + rows_per_chunk - 1) / rows_per_chunk;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), chunks);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;)
      body(c * rows_per_chunk, std::min(O, (c + 1) * rows_per_chunk));
  });
}

#ifdef __AVX512F__
// The AVX-512 build's kernels (defined below); the entry points hand their work to them.
static torch::Tensor half_mm512(const torch::Tensor& x, const torch::Tensor& w);
static torch::Tensor int8_group_mm512(const torch::Tensor& x, const torch::Tensor& q,
                                      const torch::Tensor& scale);
#endif

// RB rows of x against output row o, accumulators held in registers (RB <= 4).
template <int RB>
static inline void rows_block(const float* xp, const int8_t* qrow, const uint16_t* srow,
                              int64_t ldx, int64_t g0, int64_t g1, int64_t O, int64_t o,
                              float* op) {
  __m256 tot[RB];
  for (int r = 0; r < RB; ++r) tot[r] = _mm256_setzero_ps();
  for (int64_t g = g0; g < g1; ++g) {
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
      const float* xr = xg + r * ldx;
      __m256 p0 = _mm256_mul_ps(w0, _mm256_loadu_ps(xr));
      __m256 p1 = _mm256_mul_ps(w1, _mm256_loadu_ps(xr + 8));
      p0 = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), p0);
      p1 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), p1);
      tot[r] = _mm256_fmadd_ps(s, _mm256_add_ps(p0, p1), tot[r]);
    }
  }
  for (int r = 0; r < RB; ++r) op[r * O + o] += hsum(tot[r]);
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
#ifdef __AVX512F__
  return int8_group_mm512(x, q, scale);
#endif
  auto out = torch::zeros({R, O}, x.options());
  const auto xs = padded_rows(x);
  const int64_t ldx = xs.size(1);
  const float* xp = xs.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>());
  float* op = out.data_ptr<float>();
  for_chunks(O, K, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const int8_t* qrow = qp + o * K;
      const uint16_t* srow = sp + o * G;
      for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const float* xr = xp + r0 * ldx;
        float* orow = op + r0 * O;
        switch (std::min<int64_t>(4, R - r0)) {
          case 4: rows_block<4>(xr, qrow, srow, ldx, 0, G, O, o, orow); break;
          case 3: rows_block<3>(xr, qrow, srow, ldx, 0, G, O, o, orow); break;
          case 2: rows_block<2>(xr, qrow, srow, ldx, 0, G, O, o, orow); break;
          default: rows_block<1>(xr, qrow, srow, ldx, 0, G, O, o, orow); break;
        }
      }
    }
  });
  return out;
}


// Eight float32, float16 or bfloat16 values as floats.
static inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
static inline __m256 load8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
static inline __m256 load8(const at::BFloat16* p) {
  const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

// ---- 2-16 rows (batched decode): tiles of output rows x activation rows ---------------
//
// A tile of OT weight rows against RT activation rows keeps OT * RT float32 sums in
// registers: each weight vector, converted to float once, meets RT activation rows, and
// each activation vector OT weight rows (the former one-output-row loop loaded an
// activation vector per product, from L2 once 8 rows outgrew L1). The width is cut in
// blocks whose activation rows stay in L1 while every tile of a chunk passes over them.
// Output rows are handed out in chunks (for_chunks).

// Weights as floats, 8 at a time, for each storage kind.
struct HalfWeights {  // float16
  using type = at::Half;
  const at::Half* p; int64_t K;
  inline __m256 load(int64_t o, int64_t k) const { return load8(p + o * K + k); }
};
struct BHalfWeights {  // bfloat16
  using type = at::BFloat16;
  const at::BFloat16* p; int64_t K;
  inline __m256 load(int64_t o, int64_t k) const { return load8(p + o * K + k); }
};
template <int OT, int RT, typename W>
static inline void mm_tile(const W& w, int64_t o, const float* xp, int64_t ldx, int64_t k0,
                           int64_t k1, float* op, int64_t O) {
  __m256 acc[OT][RT];
  for (int i = 0; i < OT; ++i)
    for (int r = 0; r < RT; ++r) acc[i][r] = _mm256_setzero_ps();
  for (int64_t k = k0; k < k1; k += 8) {
    __m256 wv[OT];
    for (int i = 0; i < OT; ++i) wv[i] = w.load(o + i, k);
    for (int r = 0; r < RT; ++r) {
      const __m256 xv = _mm256_loadu_ps(xp + r * ldx + k);
      for (int i = 0; i < OT; ++i) acc[i][r] = _mm256_fmadd_ps(wv[i], xv, acc[i][r]);
    }
  }
  for (int i = 0; i < OT; ++i)
    for (int r = 0; r < RT; ++r) op[r * O + o + i] += hsum(acc[i][r]);
}

template <int OT, typename W>
static inline void mm_rows(const W& w, int64_t o, const float* xp, int64_t ldx, int64_t R,
                           int64_t k0, int64_t k1, float* op, int64_t O) {
  for (int64_t r0 = 0; r0 < R; r0 += 4) {
    const float* xr = xp + r0 * ldx;
    float* orow = op + r0 * O;
    switch (std::min<int64_t>(4, R - r0)) {
      case 4: mm_tile<OT, 4>(w, o, xr, ldx, k0, k1, orow, O); break;
      case 3: mm_tile<OT, 3>(w, o, xr, ldx, k0, k1, orow, O); break;
      case 2: mm_tile<OT, 2>(w, o, xr, ldx, k0, k1, orow, O); break;
      default: mm_tile<OT, 1>(w, o, xr, ldx, k0, k1, orow, O); break;
    }
  }
}

// out[r, o] += sum_k w[o, k] * x[r, k] (out zeroed by the caller), K a multiple of 32.
template <typename W>
static void tiled_mm(const W& w, const float* xp, int64_t ldx, float* op, int64_t R, int64_t K,
                     int64_t O) {
  // 16 KiB of activation rows per width block (half of L1), whole groups of 32.
  const int64_t kb = std::min<int64_t>(K, std::max<int64_t>(64, 4096 / R / 32 * 32));
  for_chunks(O, K * int64_t(sizeof(typename W::type)), [&](int64_t o0, int64_t o1) {
    for (int64_t k0 = 0; k0 < K; k0 += kb) {
      const int64_t k1 = std::min(K, k0 + kb);
      int64_t o = o0;
      for (; o + 2 <= o1; o += 2) mm_rows<2>(w, o, xp, ldx, R, k0, k1, op, O);
      if (o < o1) mm_rows<1>(w, o, xp, ldx, R, k0, k1, op, O);
    }
  });
}

// out[r, o] = sum_k w[o, k] * x[r, k], w float16 or bfloat16, float32 products and sums.
torch::Tensor half_mm(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2, "2-d tensors expected");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x must be float32");
  const int64_t R = x.size(0), K = x.size(1), O = w.size(0);
  TORCH_CHECK(w.size(1) == K && K % 32 == 0, "widths must match and be a multiple of 32");
  x = x.contiguous(); w = w.contiguous();
#ifdef __AVX512F__
  return half_mm512(x, w);
#endif
  auto out = torch::zeros({R, O}, x.options());
  const auto xs = padded_rows(x);
  const float* xp = xs.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (w.scalar_type() == torch::kFloat16)
    tiled_mm(HalfWeights{w.data_ptr<at::Half>(), K}, xp, xs.size(1), op, R, K, O);
  else if (w.scalar_type() == torch::kBFloat16)
    tiled_mm(BHalfWeights{w.data_ptr<at::BFloat16>(), K}, xp, xs.size(1), op, R, K, O);
  else
    TORCH_CHECK(false, "w must be float16 or bfloat16");
  return out;
}

// ---- one row (decode at batch 1): a matrix-vector product that streams w once ----------

// Scalar conversions for the tail of a width that is not a multiple of 8.
static inline float to_float(float v) { return v; }
static inline float to_float(at::Half v) { return _cvtsh_ss(v.x); }
static inline float to_float(at::BFloat16 v) {
  uint32_t u = uint32_t(v.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// NR consecutive weight rows against x: two accumulators per row (16 columns a step),
// x's vectors loaded once for the NR rows. The rows stream in parallel (NR prefetch
// streams); at K = 2048 a block of 4 rows is 16 KiB of float16.
template <int NR, typename T>
static inline void mv_rows(const float* x, const T* w, int64_t K, float* out) {
  __m256 acc[NR][2];
  for (int r = 0; r < NR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
    for (int r = 0; r < NR; ++r) {
      const T* wr = w + r * K + k;
      acc[r][0] = _mm256_fmadd_ps(load8(wr), x0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(load8(wr + 8), x1, acc[r][1]);
    }
  }
  if (k + 8 <= K) {
    const __m256 x0 = _mm256_loadu_ps(x + k);
    for (int r = 0; r < NR; ++r) acc[r][0] = _mm256_fmadd_ps(load8(w + r * K + k), x0, acc[r][0]);
    k += 8;
  }
  for (int r = 0; r < NR; ++r) {
    float t = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
    for (int64_t j = k; j < K; ++j) t += to_float(w[r * K + j]) * x[j];
    out[r] = t;
  }
}

// Output rows are handed out in chunks from a shared counter, not as a fixed half per
// thread: on a shared machine a thread that is descheduled takes fewer chunks instead of
// holding back the step (the others take its share). A chunk is >= 64 KiB of weights.
template <typename T>
static void half_mv_impl(const float* x, const T* w, float* out, int64_t K, int64_t O) {
  const int64_t rows_per_chunk =
      std::max<int64_t>(4, (32768 / std::max<int64_t>(K, 1) + 3) / 4 * 4);
  const int64_t chunks = (O + rows_per_chunk - 1) / rows_per_chunk;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), chunks);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      const int64_t o1 = std::min(O, (c + 1) * rows_per_chunk);
      int64_t o = c * rows_per_chunk;
      for (; o + 4 <= o1; o += 4) mv_rows<4>(x, w + o * K, K, out + o);
      for (; o < o1; ++o) mv_rows<1>(x, w + o * K, K, out + o);
    }
  });
}

// out[o] = sum_k w[o, k] * x[k] for one row x (shape [1, K]), w float16 or bfloat16, any K;
// float32 products and sums.
torch::Tensor half_mv(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(0) == 1, "x must be one row [1, K]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x must be float32");
  const int64_t K = x.size(1), O = w.size(0);
  TORCH_CHECK(w.size(1) == K, "widths must match");
  x = x.contiguous(); w = w.contiguous();
#ifdef __AVX512F__
  return half_mm512(x, w);
#endif
  auto out = torch::empty({1, O}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (w.scalar_type() == torch::kFloat16)
    half_mv_impl(xp, w.data_ptr<at::Half>(), op, K, O);
  else if (w.scalar_type() == torch::kBFloat16)
    half_mv_impl(xp, w.data_ptr<at::BFloat16>(), op, K, O);
  else
    TORCH_CHECK(false, "w must be float16 or bfloat16");
  return out;
}

// ---- int8 x int8 (llama.cpp's q8_0 x q8_0): activations rounded to int8 per group --------

// 32 values of x as int8 with a float32 scale: *d = max|x| / 127, q = round-to-nearest-
// even(x / d) (as llama.cpp's quantize_row_q8_0 per block, its scale kept in float32
// rather than float16). A group of zeros gets d = 0, q = 0.
static void quantize_group_q8(const float* x, int8_t* q, float* d) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 v[4], m = _mm256_setzero_ps();
  for (int j = 0; j < 4; ++j) {
    v[j] = _mm256_loadu_ps(x + 8 * j);
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[j]));
  }
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  const float amax = _mm_cvtss_f32(h);
  *d = amax / 127.0f;
  const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
  __m256i n[4];
  for (int j = 0; j < 4; ++j)
    n[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], inv),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  // int32 -> int16 -> int8 packs work within 128-bit lanes; a permute restores order.
  const __m256i p01 = _mm256_packs_epi32(n[0], n[1]), p23 = _mm256_packs_epi32(n[2], n[3]);
  const __m256i p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23),
                                                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), p);
}

// ---- AVX-512 (the second build of this source, loaded where the CPU has it) ---------------
//
// Compiled with -mavx512f/bw/vl/dq/bf16/vnni (`kernel()` loads that build only where
// /proc/cpuinfo lists those flags); the AVX2 build above is the fallback and the reference
// the tests hold both to. The same float32 products and sums, 16 lanes a step.
#ifdef __AVX512F__
#define LLAMA_KERNELS_ISA "avx512"

// Weights as 16 floats at (o, k), and the last, short step's (mask: its columns).
struct Half16 {  // float16: F16C's 16-wide conversion
  using type = at::Half;
  const at::Half* p; int64_t K;
  inline const char* addr(int64_t o, int64_t k) const { return (const char*)(p + o * K + k); }
  inline __m512 load(int64_t o, int64_t k) const {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + o * K + k)));
  }
  inline __m512 load_tail(int64_t o, int64_t k, __mmask16 m) const {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p + o * K + k));
  }
};
struct BHalf16 {  // bfloat16: the 16 bits moved up
  using type = at::BFloat16;
  const at::BFloat16* p; int64_t K;
  inline const char* addr(int64_t o, int64_t k) const { return (const char*)(p + o * K + k); }
  static inline __m512 widen(__m256i v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  }
  inline __m512 load(int64_t o, int64_t k) const {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + o * K + k)));
  }
  inline __m512 load_tail(int64_t o, int64_t k, __mmask16 m) const {
    return widen(_mm256_maskz_loadu_epi16(m, p + o * K + k));
  }
};
// int8 with a float16 scale per 32 columns: q * scale is exact in float32 (8 + 11
// significant bits), so scaling each weight once and summing float32 products of the
// scaled weights gives the same products as the dequantized matrix, in one FMA per row.
struct Int8Groups16 {
  using type = int8_t;
  const int8_t* q; const uint16_t* s; int64_t K, G;
  inline const char* addr(int64_t o, int64_t k) const { return (const char*)(q + o * K + k); }
  inline __m512 raw(int64_t o, int64_t k) const {  // unscaled
    return _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + o * K + k))));
  }
  inline __m512 scale(int64_t o, int64_t k) const {  // column k's group's scale, 16 times
    return _mm512_set1_ps(_cvtsh_ss(s[o * G + k / 32]));
  }
  inline __m512 load(int64_t o, int64_t k) const { return _mm512_mul_ps(raw(o, k), scale(o, k)); }
  inline __m512 load_tail(int64_t o, int64_t k, __mmask16 m) const {  // K % 32 == 0: unused
    return _mm512_maskz_mov_ps(m, load(o, k));
  }
};

// OT weight rows x RT activation rows over columns [k0, k1): OT * RT sums of 16 lanes in
// registers (at most 16 of the 32), each weight vector converted once for the RT rows.
template <int OT, int RT, typename W>
static inline void tile512(const W& w, int64_t o, const float* xp, int64_t ldx, int64_t k0,
                           int64_t k1, float* op, int64_t O) {
  __m512 acc[OT][RT];
  for (int i = 0; i < OT; ++i)
    for (int r = 0; r < RT; ++r) acc[i][r] = _mm512_setzero_ps();
  // The weight vectors wv (columns k..k+15 of the tile's rows) against every row's.
  auto fma_tile = [&](const __m512 (&wv)[OT], int64_t k) {
    // The next tile's weight rows, at the same columns: within a width block a row is
    // only a few cache lines, too short a stream for the hardware prefetcher (8 rows of
    // the 1B shapes, float16: 16.1 -> 12.8 ms; a prefetch past the matrix never faults).
    for (int i = 0; i < OT; ++i) _mm_prefetch(w.addr(o + i + OT, k), _MM_HINT_T0);
    for (int r = 0; r < RT; ++r) {
      __m512 xv = _mm512_loadu_ps(xp + r * ldx + k);
      asm("" : "+v"(xv));  // one load for the OT products, not one folded into each
      for (int i = 0; i < OT; ++i) acc[i][r] = _mm512_fmadd_ps(wv[i], xv, acc[i][r]);
    }
  };
  int64_t k = k0;
  if constexpr (std::is_same_v<W, Int8Groups16>) {
    // int8: each row's group scale converted once for its 32 columns, not per 16 (k0 is
    // on a group boundary: K and the width blocks are multiples of 32).
    for (; k + 32 <= k1; k += 32) {
      __m512 sc[OT];
      for (int i = 0; i < OT; ++i) sc[i] = w.scale(o + i, k);
      for (int h = 0; h < 32; h += 16) {
        __m512 wv[OT];
        for (int i = 0; i < OT; ++i) wv[i] = _mm512_mul_ps(w.raw(o + i, k + h), sc[i]);
        fma_tile(wv, k + h);
      }
    }
  }
  for (; k + 16 <= k1; k += 16) {
    __m512 wv[OT];
    for (int i = 0; i < OT; ++i) wv[i] = w.load(o + i, k);
    fma_tile(wv, k);
  }
  if (k < k1) {  // a width that is not a multiple of 16 (half_mv): masked loads, zeros beyond
    const __mmask16 m = __mmask16((1u << (k1 - k)) - 1);
    __m512 wv[OT];
    for (int i = 0; i < OT; ++i) wv[i] = w.load_tail(o + i, k, m);
    for (int r = 0; r < RT; ++r) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, xp + r * ldx + k);
      for (int i = 0; i < OT; ++i) acc[i][r] = _mm512_fmadd_ps(wv[i], xv, acc[i][r]);
    }
  }
  for (int i = 0; i < OT; ++i)
    for (int r = 0; r < RT; ++r) op[r * O + o + i] += _mm512_reduce_add_ps(acc[i][r]);
}

template <int OT, typename W>
static inline void rows512(const W& w, int64_t o, const float* xp, int64_t ldx, int64_t R,
                           int64_t k0, int64_t k1, float* op, int64_t O) {
  for (int64_t r0 = 0; r0 < R; r0 += 8) {
    const float* xr = xp + r0 * ldx;
    float* orow = op + r0 * O;
    switch (std::min<int64_t>(8, R - r0)) {
      case 8: tile512<OT, 8>(w, o, xr, ldx, k0, k1, orow, O); break;
      case 7: tile512<OT, 7>(w, o, xr, ldx, k0, k1, orow, O); break;
      case 6: tile512<OT, 6>(w, o, xr, ldx, k0, k1, orow, O); break;
      case 5: tile512<OT, 5>(w, o, xr, ldx, k0, k1, orow, O); break;
      case 4: tile512<OT, 4>(w, o, xr, ldx, k0, k1, orow, O); break;
      case 3: tile512<OT, 3>(w, o, xr, ldx, k0, k1, orow, O); break;
      case 2: tile512<OT, 2>(w, o, xr, ldx, k0, k1, orow, O); break;
      default: tile512<OT, 1>(w, o, xr, ldx, k0, k1, orow, O); break;
    }
  }
}

// out[r, o] += sum_k w[o, k] * x[r, k] (out zeroed by the caller), any K: the fused
// step's products (chunk512, below), output rows handed out in chunks.
template <typename W>
static void chunk512(const W& w, const float* xp, int64_t ldx, float* op, int64_t ldo,
                     int64_t R, int64_t K, int64_t o0, int64_t o1);
template <typename W>
static void tiled_mm512(const W& w, const float* xp, int64_t ldx, float* op, int64_t R,
                        int64_t K, int64_t O) {
  for_chunks(O, K * int64_t(sizeof(typename W::type)), [&](int64_t o0, int64_t o1) {
    chunk512(w, xp, ldx, op, O, R, K, o0, o1);
  });
}

// bfloat16 weights against activations that are bfloat16 values (a bfloat16 model's):
// vdpbf16ps multiplies 16 pairs of bfloat16s into float32 sums, exact products (8 x 8
// significant bits), no conversion of the weights, half the activation bytes. OT weight
// rows x RT activation rows, 32 columns a step, a masked last step (one row uses it).
template <int OT, int RT>
static inline void tile_dpbf16(const uint16_t* w, int64_t K, int64_t o, const uint16_t* xb,
                               int64_t ldx, int64_t k0, int64_t k1, float* op, int64_t O) {
  __m512 acc[OT][RT];
  for (int i = 0; i < OT; ++i)
    for (int r = 0; r < RT; ++r) acc[i][r] = _mm512_setzero_ps();
  int64_t k = k0;
  for (; k + 32 <= k1; k += 32) {
    __m512bh wv[OT];
    for (int i = 0; i < OT; ++i) {
      wv[i] = (__m512bh)_mm512_loadu_si512(w + (o + i) * K + k);
      _mm_prefetch(reinterpret_cast<const char*>(w + (o + i + OT) * K + k), _MM_HINT_T0);
    }
    for (int r = 0; r < RT; ++r) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + r * ldx + k);
      for (int i = 0; i < OT; ++i) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], wv[i], xv);
    }
  }
  if (k < k1) {  // the last columns of a width that is not a multiple of 32
    const __mmask32 m = __mmask32((1ull << (k1 - k)) - 1);
    __m512bh wv[OT];
    for (int i = 0; i < OT; ++i) wv[i] = (__m512bh)_mm512_maskz_loadu_epi16(m, w + (o + i) * K + k);
    for (int r = 0; r < RT; ++r) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, xb + r * ldx + k);
      for (int i = 0; i < OT; ++i) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], wv[i], xv);
    }
  }
  for (int i = 0; i < OT; ++i)
    for (int r = 0; r < RT; ++r) op[r * O + o + i] += _mm512_reduce_add_ps(acc[i][r]);
}

// OT weight rows against RT (1-8) rows of bfloat16 bits over the whole width.
template <int OT>
static inline void dpbf16_rows(const uint16_t* w, int64_t K, int64_t o, const uint16_t* xb,
                               int64_t ldb, int64_t RT, float* op, int64_t O) {
  switch (RT) {
    case 8: tile_dpbf16<OT, 8>(w, K, o, xb, ldb, 0, K, op, O); break;
    case 7: tile_dpbf16<OT, 7>(w, K, o, xb, ldb, 0, K, op, O); break;
    case 6: tile_dpbf16<OT, 6>(w, K, o, xb, ldb, 0, K, op, O); break;
    case 5: tile_dpbf16<OT, 5>(w, K, o, xb, ldb, 0, K, op, O); break;
    case 4: tile_dpbf16<OT, 4>(w, K, o, xb, ldb, 0, K, op, O); break;
    case 3: tile_dpbf16<OT, 3>(w, K, o, xb, ldb, 0, K, op, O); break;
    case 2: tile_dpbf16<OT, 2>(w, K, o, xb, ldb, 0, K, op, O); break;
    default: tile_dpbf16<OT, 1>(w, K, o, xb, ldb, 0, K, op, O); break;
  }
}

// b[i] = the high 16 bits of x[i], i < K: floats that hold bfloat16 values as bfloat16s.
static inline void bf16_bits(const float* x, uint16_t* b, int64_t K) {
  const uint32_t* u = reinterpret_cast<const uint32_t*>(x);
  int64_t i = 0;
  for (; i + 16 <= K; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + i),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_loadu_si512(u + i), 16)));
  for (; i < K; ++i) b[i] = uint16_t(u[i] >> 16);
}

// x as bfloat16 bits (rows K + 32 apart, as padded_rows' float rows), or an undefined
// tensor when some value of x is not a bfloat16 (its low 16 bits not all zero).
static torch::Tensor exact_bf16_rows(const torch::Tensor& x) {
  const int64_t R = x.size(0), K = x.size(1), ld = K + 32;
  const uint32_t* xp = reinterpret_cast<const uint32_t*>(x.data_ptr<float>());
  uint32_t low = 0;
  for (int64_t i = 0; i < R * K; ++i) low |= xp[i];
  if (low & 0xFFFFu) return torch::Tensor();
  auto xb = torch::zeros({R, ld}, x.options().dtype(torch::kInt16));
  uint16_t* bp = reinterpret_cast<uint16_t*>(xb.data_ptr<int16_t>());
  for (int64_t r = 0; r < R; ++r) bf16_bits(x.data_ptr<float>() + r * K, bp + r * ld, K);
  return xb;
}

// One row of bfloat16 values against bfloat16 weights, 4 weight rows a tile (x in L1).
static void dpbf16_mv(const uint16_t* w, const uint16_t* xb, float* op, int64_t K, int64_t O) {
  for_chunks(O, K * 2, [&](int64_t o0, int64_t o1) {
    int64_t o = o0;
    for (; o + 4 <= o1; o += 4) tile_dpbf16<4, 1>(w, K, o, xb, 0, 0, K, op, O);
    for (; o < o1; ++o) tile_dpbf16<1, 1>(w, K, o, xb, 0, 0, K, op, O);
  });
}

// One row or a few, float16 or bfloat16 weights (the entry points below call it).
static torch::Tensor half_mm512(const torch::Tensor& x, const torch::Tensor& w) {
  const int64_t R = x.size(0), K = x.size(1), O = w.size(0);
  auto out = torch::zeros({R, O}, x.options());
  // One row only: there it is the faster (1B layer shapes, 2 threads: 8.2 against 9.1
  // ms); at 8 rows the conversion by shifts measured as fast or faster (12.6 against 13.9).
  if (R == 1 && w.scalar_type() == torch::kBFloat16) {
    const auto xb = exact_bf16_rows(x);
    if (xb.defined()) {
      dpbf16_mv(reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()),
                reinterpret_cast<const uint16_t*>(xb.data_ptr<int16_t>()),
                out.data_ptr<float>(), K, O);
      return out;
    }
  }
  const auto xs = R == 1 ? x : padded_rows(x);
  const float* xp = xs.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (w.scalar_type() == torch::kFloat16)
    tiled_mm512(Half16{w.data_ptr<at::Half>(), K}, xp, xs.size(1), op, R, K, O);
  else if (w.scalar_type() == torch::kBFloat16)
    tiled_mm512(BHalf16{w.data_ptr<at::BFloat16>(), K}, xp, xs.size(1), op, R, K, O);
  else
    TORCH_CHECK(false, "w must be float16 or bfloat16");
  return out;
}

static torch::Tensor int8_group_mm512(const torch::Tensor& x, const torch::Tensor& q,
                                      const torch::Tensor& scale) {
  const int64_t R = x.size(0), K = x.size(1), O = q.size(0), G = K / 32;
  auto out = torch::zeros({R, O}, x.options());
  const auto xs = padded_rows(x);
  tiled_mm512(Int8Groups16{q.data_ptr<int8_t>(),
                           reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>()), K, G},
              xs.data_ptr<float>(), xs.size(1), out.data_ptr<float>(), R, K, O);
  return out;
}

#else
#define LLAMA_KERNELS_ISA "avx2"
#endif

// ---- RMSNorm of a few float32 rows -------------------------------------------------------

// out = x / sqrt(mean(x^2) + eps) * w per row, float32 sums: one call instead of ATen's six
// operators (about 18 us per call for a 768-wide row here, 17 calls per 100M step).
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && w.scalar_type() == torch::kFloat32,
              "float32 tensors expected");
  const int64_t D = w.numel();
  TORCH_CHECK(D > 0 && x.size(-1) == D, "widths must match");
  x = x.contiguous(); w = w.contiguous();
  auto out = torch::empty_like(x);
  const int64_t R = x.numel() / D;
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = xp + r * D;
    float* orow = op + r * D;
    __m256 acc = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= D; k += 8) {
      const __m256 v = _mm256_loadu_ps(xr + k);
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    float ss = hsum(acc);
    for (; k < D; ++k) ss += xr[k] * xr[k];
    const float inv = 1.0f / std::sqrt(ss / float(D) + float(eps));
    const __m256 vi = _mm256_set1_ps(inv);
    for (k = 0; k + 8 <= D; k += 8)
      _mm256_storeu_ps(orow + k, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + k), vi),
                                               _mm256_loadu_ps(wp + k)));
    for (; k < D; ++k) orow[k] = xr[k] * inv * wp[k];
  }
  return out;
}

// ---- The fused decode step: a whole decode pass of 1-16 rows in one call ----------------
//
// A `DecodePlan` holds pointers to a prepared model's weights; `step(tokens, positions,
// kv)` runs the embedding, every layer (RMSNorm, the q/k/v product, RoPE, the cache
// write, attention over each row's own positions, o + residual, RMSNorm, gate/up,
// SiLU * up, down + residual), the last RMSNorm and the output product in one parallel
// region. The pass is a list of phases; each phase is cut into chunks (output rows of a
// product, or one activation row, or one (row, kv head) of attention) that the threads
// take from a shared counter, and a thread moves to the next phase once every chunk of
// this one is done (a count of finished chunks, not a barrier of all threads): a
// thread that the machine deschedules takes fewer chunks, and one that wakes after a
// phase ended skips it. ATen instead gives each thread a fixed half of each of the
// ~280 operators of a step and waits for both, every time.
//
// The values are rounded to the model's dtype where the operator-by-operator path
// rounds them (RMSNorm's output, each product's output, the residual sums, SiLU and
// its product with up), so both paths agree within float32 summation order.

enum { W_F32 = 0, W_F16 = 1, W_BF16 = 2, W_I8 = 3, W_Q8 = 4 };  // weight kinds
enum { D_F32 = 0, D_F16 = 1, D_BF16 = 2 };  // activation and cache dtypes

static inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline uint16_t float_to_bf16_bits(float f) {  // round to nearest even (finite f)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
static inline float round_to(int dt, float v) {
  if (dt == D_BF16) return bf16_bits_to_float(float_to_bf16_bits(v));
  if (dt == D_F16) return _cvtsh_ss(_cvtss_sh(v, 0));
  return v;
}
static inline float load_as_float(int dt, const void* p, int64_t i) {
  if (dt == D_BF16) return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
  if (dt == D_F16) return _cvtsh_ss(static_cast<const uint16_t*>(p)[i]);
  return static_cast<const float*>(p)[i];
}
static inline void store_from_float(int dt, void* p, int64_t i, float v) {
  if (dt == D_BF16) static_cast<uint16_t*>(p)[i] = float_to_bf16_bits(v);
  else if (dt == D_F16) static_cast<uint16_t*>(p)[i] = _cvtss_sh(v, 0);
  else static_cast<float*>(p)[i] = v;
}
static inline torch::ScalarType dtype_of(int dt) {  // D_* codes; W_F32..W_BF16 alike
  return dt == D_F32 ? torch::kFloat32 : dt == D_F16 ? torch::kFloat16 : torch::kBFloat16;
}
static inline float dot8(const float* a, const float* b, int64_t n) {  // n % 8 == 0 or tail
  __m256 acc = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
  float t = hsum(acc);
  for (; k < n; ++k) t += a[k] * b[k];
  return t;
}

// ---- The step's elementwise work, 8 lanes at a time (AVX2 instructions: both builds) ----
//
// Each helper gives, lane by lane, exactly what the scalar expression in its comment gives
// (round_to's rounding: float16 by F16C's round-to-nearest-even, bfloat16 by the same
// integer rounding as float_to_bf16_bits), except silu_mul's exp (see exp8).

// Eight floats rounded to the dtype dt (round_to, lane by lane).
static inline __m256 round8(int dt, __m256 v) {
  if (dt == D_F16)
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  if (dt == D_BF16) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb);
    return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(int(0xFFFF0000u))));
  }
  return v;
}

// p[k] = round_to(dt, p[k]) for k < n.
static inline void round_span(int dt, float* p, int64_t n) {
  if (dt == D_F32) return;
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) _mm256_storeu_ps(p + k, round8(dt, _mm256_loadu_ps(p + k)));
  for (; k < n; ++k) p[k] = round_to(dt, p[k]);
}

// dst[k] = round_to(dt, res[k] + round_to(dt, t[k])): a product added to the residual.
static inline void add_rounded(int dt, const float* res, const float* t, float* dst, int64_t n) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(dst + k, round8(dt, _mm256_add_ps(_mm256_loadu_ps(res + k),
                                                       round8(dt, _mm256_loadu_ps(t + k)))));
  for (; k < n; ++k) dst[k] = round_to(dt, res[k] + round_to(dt, t[k]));
}

// exp(x) for 8 floats: x = n ln2 + r (|r| <= ln2 / 2, ln2 in two parts), exp(r) by a
// degree-6 polynomial (Cephes' expf coefficients, about 1 ulp), times 2^n built in the
// exponent bits; +inf above 88.72 and 0 below -87.33 (where float32's exp overflows or
// leaves the normal range), as std::exp gives (it gives subnormals down to -103.9: the
// SiLU that uses this multiplies them by x and rounds them away in half precision).
static inline __m256 exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.7228391f), lo = _mm256_set1_ps(-87.3365448f);
  const __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ), under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  const __m256 xc = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n: n in [-126, 128]; 2^128 is split as 2^127 * 2 so the exponent field never overflows.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i big = _mm256_cmpgt_epi32(ni, _mm256_set1_epi32(127));
  const __m256i e = _mm256_sub_epi32(ni, _mm256_and_si256(big, _mm256_set1_epi32(1)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23);
  const __m256 two_n = _mm256_castsi256_ps(bits);
  p = _mm256_mul_ps(p, two_n);
  p = _mm256_blendv_ps(p, _mm256_add_ps(p, p), _mm256_castsi256_ps(big));
  p = _mm256_blendv_ps(p, _mm256_set1_ps(INFINITY), over);
  return _mm256_andnot_ps(under, p);
}

// dst[k] = round_to(dt, s * u) with g = round_to(dt, gate[k]), u = round_to(dt, up[k]) and
// s = round_to(dt, g / (1 + exp(-g))): SiLU(gate) * up, rounded where the operators round.
static inline void silu_mul(int dt, const float* gate, const float* up, float* dst, int64_t n) {
  int64_t k = 0;
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  for (; k + 8 <= n; k += 8) {
    const __m256 g = round8(dt, _mm256_loadu_ps(gate + k));
    const __m256 u = round8(dt, _mm256_loadu_ps(up + k));
    const __m256 s = round8(dt, _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, g)))));
    _mm256_storeu_ps(dst + k, round8(dt, _mm256_mul_ps(s, u)));
  }
  for (; k < n; ++k) {
    const float g = round_to(dt, gate[k]), u = round_to(dt, up[k]);
    const float s = round_to(dt, g / (1.0f + std::exp(-g)));
    dst[k] = round_to(dt, s * u);
  }
}

// out[k] = round_to(dt, round_to(dt, x[k] * inv) * w[k]): RMSNorm's scaling and weight.
static inline void norm_scale(int dt, const float* x, float inv, const float* w, float* out,
                              int64_t n) {
  int64_t k = 0;
  const __m256 vi = _mm256_set1_ps(inv);
  for (; k + 8 <= n; k += 8) {
    const __m256 xn = round8(dt, _mm256_mul_ps(_mm256_loadu_ps(x + k), vi));
    _mm256_storeu_ps(out + k, round8(dt, _mm256_mul_ps(xn, _mm256_loadu_ps(w + k))));
  }
  for (; k < n; ++k) out[k] = round_to(dt, round_to(dt, x[k] * inv) * w[k]);
}

// dst[k] = load_as_float(dt, p, at + k) for k < n: a cache row as floats.
static inline void load_span(int dt, const void* p, int64_t at, float* dst, int64_t n) {
  const uint16_t* h = static_cast<const uint16_t*>(p) + at;
  int64_t k = 0;
  if (dt != D_F32)
    for (; k + 8 <= n; k += 8) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + k));
      _mm256_storeu_ps(dst + k, dt == D_F16 ? _mm256_cvtph_ps(v)
                                            : _mm256_castsi256_ps(_mm256_slli_epi32(
                                                  _mm256_cvtepu16_epi32(v), 16)));
    }
  for (; k < n; ++k) dst[k] = load_as_float(dt, p, at + k);
}

// s[t] = exp(s[t] - mx) for t < n (exp8's polynomial); returns their sum.
static inline float exp_span(float* s, float mx, int64_t n) {
  const __m256 m = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), m));
    _mm256_storeu_ps(s + t, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  for (; t < n; ++t) { s[t] = std::exp(s[t] - mx); sum += s[t]; }
  return sum;
}

// q8_0 weights for the few-row products (`q8_pack`), 16 output rows a block: for block b and
// group g (32 columns), 8 vectors of 64 bytes, lane i of vector j holding columns
// 32g + 4j .. 32g + 4j + 3 of row 16b + i, as w + 128 (vpdpbusd's unsigned operand; the
// activations are the signed one, each 4 bytes broadcast to the 16 lanes); then the
// block's float16 scales, [O/16][G][16]. Rows past O (the last block) are zeros.
// A row's products then need no reduction across lanes, and one int32 -> float32
// conversion, scale and add covers 16 rows' groups at once (row-major int8 rows needed
// them per 8 lanes of a group: 3 float instructions for every 64 products, the bound of
// the former kernel at 8 rows: 1B steps 46 against 40 ms).
static void pack_q8(const int8_t* q, const uint16_t* s, int64_t O, int64_t K, uint8_t* pw,
                    uint16_t* ps) {
  const int64_t G = K / 32, NB = (O + 15) / 16;
  at::parallel_for(0, NB, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t g = 0; g < G; ++g) {
        uint8_t* dst = pw + (b * G + g) * 512;
        uint16_t* sd = ps + (b * G + g) * 16;
        for (int i = 0; i < 16; ++i) {
          const int64_t o = b * 16 + i;
          sd[i] = o < O ? s[o * G + g] : 0;
          for (int j = 0; j < 8; ++j)
            for (int t = 0; t < 4; ++t)
              dst[j * 64 + i * 4 + t] =
                  o < O ? uint8_t(q[o * K + g * 32 + 4 * j + t]) ^ 0x80 : uint8_t(0x80);
        }
      }
  });
}

#ifdef __AVX512F__
// Software prefetch ahead of the weight streams: conversions (half precision, int8), the
// integer products or the arithmetic's own pace slow the loads' issue, and the hardware
// prefetcher alone kept too few lines in flight on the Xeon of 2026-12-08 (2 cores, 25-27
// GB/s). Whole steps, alternated in one build:
// - q8_0 blocks (here), int8 groups (row_int8) and vdpbf16ps rows (row_dpbf16) 4 KiB ahead
//   into L1: q8_0 at 8 rows, 100M, products 4.9 -> 2.5-2.9 ms a step (2 groups ahead: no
//   gain; 4-16 alike); one row: int8 1B 59 -> 46.5 ms, 100M 4.4 -> 2.8 ms; q8_0 1B 39 ->
//   37 ms, 100M 2.4 -> 2.1 ms; bfloat16 1-2% (into L2 at 2 KiB: int8 3% faster, q8_0 5%
//   slower);
// - the float loop (row_seq512: float32, float16, or bfloat16 weights against float32
//   activations) 2 KiB ahead into L2: 1B float16 85 -> 67 ms with 4 KiB into L1, later,
//   the host slower, 99-103 -> 83-86 ms into L2 against L1; 1B float32 166-171 -> 133-136
//   ms, 100M float32 18.0-19.5 -> 15.0-15.4 ms (4 KiB into L1 made float32 slower).
constexpr int ROW_PREFETCH = 4096;
constexpr int ROW_PREFETCH_L2 = 2048;
// RB rows of int8 activations, group-major (group g of row r at xq + (16 g + r) * 32,
// its scale at xd[16 g + r] and xc[16 g + r] = -128 * its sum) against one block of
// pack_q8's weights:
// out[r, o + i] for the block's first n rows. Per group, each row's int32 sum over the
// group is exact ((w + 128) * x summed, less 128 * sum(x)), then scaled by the float32
// product of the two scales and added in float32, group after group (llama.cpp's order).
template <int RB>
static inline void q8_packed_rows(const uint8_t* pw, const uint16_t* ps, int64_t G,
                                  const int8_t* xq, const float* xd, const int32_t* xc,
                                  float* out, int64_t ldo, int64_t o, int64_t n) {
  __m512 acc[RB];
  for (int r = 0; r < RB; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* wg = pw + g * 512;
    __m512i s[RB];
    for (int r = 0; r < RB; ++r) s[r] = _mm512_set1_epi32(xc[16 * g + r]);
    if (RB <= 2) {  // two chains of 4 a row: one of 8 waits on vpdpbusd's latency
      __m512i t[RB];
      for (int r = 0; r < RB; ++r) t[r] = _mm512_setzero_si512();
      for (int j = 0; j < 8; j += 2) {
        const char* line = reinterpret_cast<const char*>(wg + j * 64) + ROW_PREFETCH;
        _mm_prefetch(line, _MM_HINT_T0);
        _mm_prefetch(line + 64, _MM_HINT_T0);
        const __m512i w0 = _mm512_loadu_si512(wg + j * 64);
        const __m512i w1 = _mm512_loadu_si512(wg + j * 64 + 64);
        for (int r = 0; r < RB; ++r) {
          const int8_t* x = xq + (16 * g + r) * 32 + 4 * j;
          int32_t x0, x1;
          std::memcpy(&x0, x, 4); std::memcpy(&x1, x + 4, 4);
          s[r] = _mm512_dpbusd_epi32(s[r], w0, _mm512_set1_epi32(x0));
          t[r] = _mm512_dpbusd_epi32(t[r], w1, _mm512_set1_epi32(x1));
        }
      }
      for (int r = 0; r < RB; ++r) s[r] = _mm512_add_epi32(s[r], t[r]);
    } else {
      for (int j = 0; j < 8; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(wg + j * 64) + ROW_PREFETCH, _MM_HINT_T0);
        const __m512i w = _mm512_loadu_si512(wg + j * 64);
        for (int r = 0; r < RB; ++r) {
          int32_t x;
          std::memcpy(&x, xq + (16 * g + r) * 32 + 4 * j, 4);
          s[r] = _mm512_dpbusd_epi32(s[r], w, _mm512_set1_epi32(x));
        }
      }
    }
    const __m512 sw =
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps + g * 16)));
    for (int r = 0; r < RB; ++r)
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]),
                               _mm512_mul_ps(sw, _mm512_set1_ps(xd[16 * g + r])), acc[r]);
  }
  const __mmask16 m = n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
  for (int r = 0; r < RB; ++r) _mm512_mask_storeu_ps(out + r * ldo + o, m, acc[r]);
}
constexpr int Q8_ROWS = 8;  // activation rows a q8_packed_rows call takes
#else
// AVX2: the block as two halves of 8 rows; the weights back to signed bytes, products by
// `_mm256_maddubs_epi16` on |w| and the activations with w's sign (pairs at most
// 2 * 127 * 127: no saturation), summed to int32 per row and 4 columns: the same exact
// sums per group as the AVX-512 kernel's (xc unused), the same float32 steps after them.
template <int RB>
static inline void q8_packed_rows(const uint8_t* pw, const uint16_t* ps, int64_t G,
                                  const int8_t* xq, const float* xd, const int32_t*,
                                  float* out, int64_t ldo, int64_t o, int64_t n) {
  const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(char(0x80));
  for (int h = 0; h < 2 && 8 * h < n; ++h) {
    __m256 acc[RB];
    for (int r = 0; r < RB; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      const uint8_t* wg = pw + g * 512 + 32 * h;
      __m256i s[RB];
      for (int r = 0; r < RB; ++r) s[r] = _mm256_setzero_si256();
      for (int j = 0; j < 8; ++j) {
        const __m256i w = _mm256_xor_si256(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + j * 64)), flip);
        const __m256i aw = _mm256_sign_epi8(w, w);
        for (int r = 0; r < RB; ++r) {
          int32_t x;
          std::memcpy(&x, xq + (16 * g + r) * 32 + 4 * j, 4);
          const __m256i p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(_mm256_set1_epi32(x), w));
          s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(p16, ones));
        }
      }
      const __m256 sw = _mm256_cvtph_ps(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(ps + g * 16 + 8 * h)));
      for (int r = 0; r < RB; ++r)
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r]),
                                 _mm256_mul_ps(sw, _mm256_set1_ps(xd[16 * g + r])), acc[r]);
    }
    const int64_t m = std::min<int64_t>(8, n - 8 * h);
    for (int r = 0; r < RB; ++r) {
      float* dst = out + r * ldo + o + 8 * h;
      if (m == 8) {
        _mm256_storeu_ps(dst, acc[r]);
      } else {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, acc[r]);
        std::memcpy(dst, tmp, sizeof(float) * m);
      }
    }
  }
}
constexpr int Q8_ROWS = 4;
#endif

// One weight matrix of the plan.
struct Mat {
  int kind = W_F32;
  const void* w = nullptr;
  const uint16_t* s = nullptr;  // int8: float16 scales per 32 columns
  // q8_0: the weights and scales in 16-row blocks (pack_q8)
  const uint8_t* pw = nullptr; const uint16_t* ps = nullptr;
  int64_t O = 0, K = 0;
  int64_t row_bytes() const { return kind == W_F32 ? 4 * K : kind <= W_BF16 ? 2 * K : K + K / 16; }
};

// A product's input rows: float32 (rows ld apart), and where the kind needs them the
// rows rounded to int8, group-major (q8: group g of row r at q + (16 g + r) * 32, its
// scale and -128 times its sum at d and c + 16 g + r; see q8_packed_rows), or, for
// bfloat16 values against bfloat16 weights, as bfloat16 bits (`b`, rows ldb apart; set
// only then).
struct Rows {
  float* x = nullptr; int64_t ld = 0;
  int8_t* q = nullptr; float* d = nullptr;
  int32_t* c = nullptr;
  uint16_t* b = nullptr; int64_t ldb = 0;
};

static inline void fill_extras(int kind, int act, const float* x, int64_t K, int64_t r,
                               const Rows& a) {
  if (kind == W_Q8) {
    for (int64_t g = 0; g < K / 32; ++g) {
      int8_t* qg = a.q + (16 * g + r) * 32;
      quantize_group_q8(x + g * 32, qg, a.d + 16 * g + r);
      int32_t sum = 0;
      for (int k = 0; k < 32; ++k) sum += qg[k];
      a.c[16 * g + r] = -128 * sum;
    }
  }
#ifdef __AVX512F__
  if (kind == W_BF16 && act == D_BF16) {
    // The row holds bfloat16 values (rounded so): its bits, for vdpbf16ps.
    bf16_bits(x, a.b + r * a.ldb, K);
  }
#endif
}

#ifdef __AVX512F__
struct F32w16 {  // float32 weights
  using type = float;
  const float* p; int64_t K;
  inline const char* addr(int64_t o, int64_t k) const { return (const char*)(p + o * K + k); }
  inline __m512 load(int64_t o, int64_t k) const { return _mm512_loadu_ps(p + o * K + k); }
  inline __m512 load_tail(int64_t o, int64_t k, __mmask16 m) const {
    return _mm512_maskz_loadu_ps(m, p + o * K + k);
  }
};
// One activation row: the weight rows one after another, in memory order. Reading 4 rows
// side by side (half_mv's tiles) measured half the rate from DRAM: 32000x768 bfloat16,
// 1 thread 8.6 against 16.5 GB/s, 2 threads 17.6 against 25.3 (the hardware prefetcher
// follows one stream).
// (The loop prefetches ahead of the stream: ROW_PREFETCH_L2, beside q8_packed_rows.)
template <typename W>
static inline void row_seq512(const W& w, int64_t o, const float* x, int64_t K, float* op) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    _mm_prefetch(w.addr(o, k) + ROW_PREFETCH_L2, _MM_HINT_T1);  // 32 columns: 1 or 2 lines
    if constexpr (sizeof(typename W::type) == 4)
      _mm_prefetch(w.addr(o, k) + ROW_PREFETCH_L2 + 64, _MM_HINT_T1);
    a0 = _mm512_fmadd_ps(w.load(o, k), _mm512_loadu_ps(x + k), a0);
    a1 = _mm512_fmadd_ps(w.load(o, k + 16), _mm512_loadu_ps(x + k + 16), a1);
  }
  for (; k < K; k += 16) {
    const __mmask16 m = k + 16 <= K ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
    a0 = _mm512_fmadd_ps(w.load_tail(o, k, m), _mm512_maskz_loadu_ps(m, x + k), a0);
  }
  op[o] += _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
static inline void row_dpbf16(const uint16_t* w, int64_t o, const uint16_t* xb, int64_t K,
                              float* op) {
  const uint16_t* r = w + o * K;
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(r + k) + ROW_PREFETCH, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(r + k) + ROW_PREFETCH + 64, _MM_HINT_T0);
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(r + k),
                          (__m512bh)_mm512_loadu_si512(xb + k));
    a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(r + k + 32),
                          (__m512bh)_mm512_loadu_si512(xb + k + 32));
  }
  for (; k < K; k += 32) {
    const __mmask32 m = k + 32 <= K ? ~__mmask32(0) : __mmask32((1ull << (K - k)) - 1);
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_maskz_loadu_epi16(m, r + k),
                          (__m512bh)_mm512_maskz_loadu_epi16(m, xb + k));
  }
  op[o] += _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
// int8 weights, one row: each group's 32 products summed unscaled, then scaled once
// (Int8Groups16 scales every weight: a multiply per 16 weights more, and at one row the
// kernel was bound by that arithmetic, not by memory: 1B shapes 8.9 GB/s against q8_0's
// 18.3 in the same run).
static inline void row_int8(const Int8Groups16& w, int64_t o, const float* x, float* op) {
  const int64_t G = w.G;
  const uint16_t* sr = w.s + o * G;
  // The row's scales as float32 first (16 a conversion), then one broadcast per group.
  float sf[256];
  for (int64_t g0 = 0; g0 < G; g0 += 256) {
    const int64_t n = std::min<int64_t>(256, G - g0);
    for (int64_t g = 0; g < n; g += 16) {
      const __mmask16 m = g + 16 <= n ? __mmask16(0xFFFF) : __mmask16((1u << (n - g)) - 1);
      _mm512_mask_storeu_ps(sf + g, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, sr + g0 + g)));
    }
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (int64_t g = 0; g < n; ++g) {
      const int64_t k = (g0 + g) * 32;
      if (!(g & 1)) _mm_prefetch(w.addr(o, k) + ROW_PREFETCH, _MM_HINT_T0);  // a line a pair
      const __m512 p = _mm512_fmadd_ps(w.raw(o, k + 16), _mm512_loadu_ps(x + k + 16),
                                       _mm512_mul_ps(w.raw(o, k), _mm512_loadu_ps(x + k)));
      if (g & 1) a1 = _mm512_fmadd_ps(_mm512_set1_ps(sf[g]), p, a1);
      else a0 = _mm512_fmadd_ps(_mm512_set1_ps(sf[g]), p, a0);
    }
    op[o] += _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  }
}

template <typename W>
static void chunk512(const W& w, const float* xp, int64_t ldx, float* op, int64_t ldo,
                     int64_t R, int64_t K, int64_t o0, int64_t o1) {
  if (R == 1) {
    for (int64_t o = o0; o < o1; ++o) row_seq512(w, o, xp, K, op);
    return;
  }
  // Tiles of 3 weight rows x 8 activation rows (24 sums, 3 weight vectors and one
  // activation vector: 28 of the 32 registers) over the whole width: the 8 activation
  // rows (up to 176 KiB at the 1B shapes' widest, 5632) are read from L2, and each sum is
  // reduced once. 1B shapes, 8 rows, whole steps (2026-12-07, quiet): float32 242 -> 181
  // ms, int8 180 -> 127 ms, float16 135 -> 123-133 ms against 2 x 8 tiles over width
  // blocks of 512 (16 KiB of activations in L1, every block's sums reduced into the
  // output): on this CPU the reductions and the short weight streams cost more than L2.
  const int64_t kb = std::min<int64_t>(K, 16384);
  for (int64_t k0 = 0; k0 < K; k0 += kb) {
    const int64_t k1 = std::min(K, k0 + kb);
    int64_t o = o0;
    for (; o + 3 <= o1; o += 3) rows512<3>(w, o, xp, ldx, R, k0, k1, op, ldo);
    for (; o < o1; ++o) rows512<1>(w, o, xp, ldx, R, k0, k1, op, ldo);
  }
}
#else
struct F32w8 {  // float32 weights
  using type = float;
  const float* p; int64_t K;
  inline __m256 load(int64_t o, int64_t k) const { return _mm256_loadu_ps(p + o * K + k); }
};
template <typename W>
static void chunk256(const W& w, const typename W::type* wp, const float* xp, int64_t ldx,
                     float* op, int64_t ldo, int64_t R, int64_t K, int64_t o0, int64_t o1) {
  if (R == 1) {  // half_mv's loop: 4 weight rows against the row held in L1
    int64_t o = o0;
    for (; o + 4 <= o1; o += 4) mv_rows<4>(xp, wp + o * K, K, op + o);
    for (; o < o1; ++o) mv_rows<1>(xp, wp + o * K, K, op + o);
    return;
  }
  const int64_t kb = std::min<int64_t>(K, std::max<int64_t>(64, 4096 / R / 32 * 32));
  for (int64_t k0 = 0; k0 < K; k0 += kb) {
    const int64_t k1 = std::min(K, k0 + kb);
    int64_t o = o0;
    for (; o + 2 <= o1; o += 2) mm_rows<2>(w, o, xp, ldx, R, k0, k1, op, ldo);
    if (o < o1) mm_rows<1>(w, o, xp, ldx, R, k0, k1, op, ldo);
  }
}
#endif

// out[r, o] = sum_k w[o, k] * x[r, k] for the output rows [o0, o1) and R input rows.
static void mat_rows(const Mat& m, const Rows& a, int64_t R, int64_t o0, int64_t o1, float* out,
                     int64_t ldo) {
  const int64_t K = m.K, G = K / 32;
  if (m.kind == W_Q8) {
    // 16 output rows a block (o0 is a multiple of 16: the callers' chunks are)
    for (int64_t o = o0; o < o1; o += 16) {
      const uint8_t* pw = m.pw + (o / 16) * G * 512;
      const uint16_t* ps = m.ps + (o / 16) * G * 16;
      const int64_t n = std::min<int64_t>(16, o1 - o);
      for (int64_t r0 = 0; r0 < R; r0 += Q8_ROWS) {
        const int8_t* xr = a.q + r0 * 32;
        const float* dr = a.d + r0;
        const int32_t* cr = a.c + r0;
        float* orow = out + r0 * ldo;
        switch (std::min<int64_t>(Q8_ROWS, R - r0)) {
#ifdef __AVX512F__
          case 8: q8_packed_rows<8>(pw, ps, G, xr, dr, cr, orow, ldo, o, n); break;
          case 7: q8_packed_rows<7>(pw, ps, G, xr, dr, cr, orow, ldo, o, n); break;
          case 6: q8_packed_rows<6>(pw, ps, G, xr, dr, cr, orow, ldo, o, n); break;
          case 5: q8_packed_rows<5>(pw, ps, G, xr, dr, cr, orow, ldo, o, n); break;
#endif
          case 4: q8_packed_rows<4>(pw, ps, G, xr, dr, cr, orow, ldo, o, n); break;
          case 3: q8_packed_rows<3>(pw, ps, G, xr, dr, cr, orow, ldo, o, n); break;
          case 2: q8_packed_rows<2>(pw, ps, G, xr, dr, cr, orow, ldo, o, n); break;
          default: q8_packed_rows<1>(pw, ps, G, xr, dr, cr, orow, ldo, o, n); break;
        }
      }
    }
    return;
  }
  for (int64_t r = 0; r < R; ++r)
    std::memset(out + r * ldo + o0, 0, sizeof(float) * (o1 - o0));
#ifdef __AVX512F__
  const float* x = a.x;
  const int64_t ld = a.ld;
  switch (m.kind) {
    case W_F32:
      chunk512(F32w16{static_cast<const float*>(m.w), K}, x, ld, out, ldo, R, K, o0, o1);
      break;
    case W_F16:
      chunk512(Half16{static_cast<const at::Half*>(m.w), K}, x, ld, out, ldo, R, K, o0, o1);
      break;
    case W_BF16:
      if (a.b != nullptr) {
        const uint16_t* w = static_cast<const uint16_t*>(m.w);
        if (R == 1) {
          for (int64_t o = o0; o < o1; ++o) row_dpbf16(w, o, a.b, K, out);
          break;
        }
        // Several rows: 3 weight rows x up to 8 rows a tile over the whole width, as
        // chunk512's, 32 exact products a vdpbf16ps and no widening of the weights.
        for (int64_t r0 = 0; r0 < R; r0 += 8) {
          const uint16_t* xb = a.b + r0 * a.ldb;
          float* orow = out + r0 * ldo;
          const int64_t rt = std::min<int64_t>(8, R - r0);
          int64_t o = o0;
          for (; o + 3 <= o1; o += 3) dpbf16_rows<3>(w, K, o, xb, a.ldb, rt, orow, ldo);
          for (; o < o1; ++o) dpbf16_rows<1>(w, K, o, xb, a.ldb, rt, orow, ldo);
        }
      } else {
        chunk512(BHalf16{static_cast<const at::BFloat16*>(m.w), K}, x, ld, out, ldo, R, K, o0,
                 o1);
      }
      break;
    default: {
      const Int8Groups16 w{static_cast<const int8_t*>(m.w), m.s, K, G};
      if (R == 1) {
        for (int64_t o = o0; o < o1; ++o) row_int8(w, o, x, out);
        break;
      }
      chunk512(w, x, ld, out, ldo, R, K, o0, o1);
    }
  }
#else
  switch (m.kind) {
    case W_F32: {
      const float* p = static_cast<const float*>(m.w);
      chunk256(F32w8{p, K}, p, a.x, a.ld, out, ldo, R, K, o0, o1);
      break;
    }
    case W_F16: {
      const at::Half* p = static_cast<const at::Half*>(m.w);
      chunk256(HalfWeights{p, K}, p, a.x, a.ld, out, ldo, R, K, o0, o1);
      break;
    }
    case W_BF16: {
      const at::BFloat16* p = static_cast<const at::BFloat16*>(m.w);
      chunk256(BHalfWeights{p, K}, p, a.x, a.ld, out, ldo, R, K, o0, o1);
      break;
    }
    default: {
      const int8_t* qp = static_cast<const int8_t*>(m.w);
      for (int64_t o = o0; o < o1; ++o)
        for (int64_t r0 = 0; r0 < R; r0 += 4) {
          const float* xr = a.x + r0 * a.ld;
          float* orow = out + r0 * ldo;
          const int8_t* qrow = qp + o * K;
          const uint16_t* srow = m.s + o * G;
          switch (std::min<int64_t>(4, R - r0)) {
            case 4: rows_block<4>(xr, qrow, srow, a.ld, 0, G, ldo, o, orow); break;
            case 3: rows_block<3>(xr, qrow, srow, a.ld, 0, G, ldo, o, orow); break;
            case 2: rows_block<2>(xr, qrow, srow, a.ld, 0, G, ldo, o, orow); break;
            default: rows_block<1>(xr, qrow, srow, a.ld, 0, G, ldo, o, orow); break;
          }
        }
    }
  }
#endif
}

struct PlanLayer {
  Mat qkv, o, w13, down;
  const float* n1; const float* n2;  // RMSNorm weights as float32
};

// ---- q8_0 x q8_0 outside the fused step --------------------------------------------------

// (q [O, K] int8, scale [O, K / 32] float16) -> pack_q8's blocks: [O/16, K/32, 512] uint8
// and [O/16, K/32, 16] float16 (O rounded up to 16 with zero rows).
std::vector<torch::Tensor> q8_pack(torch::Tensor q, torch::Tensor scale) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == torch::kInt8 && scale.dim() == 2 &&
              scale.scalar_type() == torch::kFloat16, "int8 [O, K] and float16 [O, K / 32]");
  const int64_t O = q.size(0), K = q.size(1), G = K / 32, NB = (O + 15) / 16;
  TORCH_CHECK(K % 32 == 0 && scale.size(0) == O && scale.size(1) == G, "groups of 32 columns");
  q = q.contiguous(); scale = scale.contiguous();
  auto pw = torch::empty({NB, G, 512}, torch::TensorOptions().dtype(torch::kUInt8));
  auto ps = torch::empty({NB, G, 16}, torch::TensorOptions().dtype(torch::kFloat16));
  pack_q8(q.data_ptr<int8_t>(), reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>()),
          O, K, pw.data_ptr<uint8_t>(), reinterpret_cast<uint16_t*>(ps.data_ptr<at::Half>()));
  return {pw, ps};
}

// out[r, o] = sum_g scale[o, g] * d[r, g] * sum_{k in g} q[o, k] * xq[r, k] for 1-16 rows
// of x, with (xq, d) = x rounded to int8 per group of 32 (quantize_group_q8) and (q, scale)
// in q8_pack's blocks: llama.cpp's q8_0 x q8_0, the fused step's products. Output rows
// are handed out in chunks of whole blocks, at least 64 KiB of weights (for_chunks).
torch::Tensor q8_packed_mm(torch::Tensor x, torch::Tensor pw, torch::Tensor ps, int64_t O) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x: float32 [rows, K]");
  TORCH_CHECK(pw.dim() == 3 && pw.scalar_type() == torch::kUInt8 && pw.size(2) == 512 &&
              pw.is_contiguous() && ps.dim() == 3 && ps.scalar_type() == torch::kFloat16 &&
              ps.is_contiguous() && ps.size(0) == pw.size(0) && ps.size(1) == pw.size(1) &&
              ps.size(2) == 16, "weights in q8_pack's blocks");
  const int64_t R = x.size(0), G = pw.size(1), K = 32 * G, NB = pw.size(0);
  TORCH_CHECK(x.size(1) == K && R >= 1 && R <= 16 && O > 16 * (NB - 1) && O <= 16 * NB,
              "shapes do not match");
  x = x.contiguous();
  auto q = torch::empty({G * 16 * 32}, x.options().dtype(torch::kInt8));
  auto d = torch::empty({G * 16}, x.options());
  auto c = torch::empty({G * 16}, x.options().dtype(torch::kInt32));
  Rows a;
  a.x = x.data_ptr<float>(); a.ld = K;
  a.q = q.data_ptr<int8_t>(); a.d = d.data_ptr<float>(); a.c = c.data_ptr<int32_t>();
  for (int64_t r = 0; r < R; ++r) fill_extras(W_Q8, D_F32, a.x + r * K, K, r, a);
  Mat m;
  m.kind = W_Q8; m.O = O; m.K = K;
  m.pw = pw.data_ptr<uint8_t>(); m.ps = reinterpret_cast<const uint16_t*>(ps.data_ptr<at::Half>());
  auto out = torch::empty({R, O}, x.options());
  float* op = out.data_ptr<float>();
  // for_chunks' chunks are whole multiples of 16 rows: whole blocks
  for_chunks(O, m.row_bytes(), [&](int64_t o0, int64_t o1) { mat_rows(m, a, R, o0, o1, op, O); });
  return out;
}

struct alignas(64) PhaseCounter {
  std::atomic<int64_t> next{0};
  char pad[56];
  std::atomic<int64_t> done{0};
  char pad2[56];
};

enum { P_EMBED, P_NORM1, P_QKV, P_ATTN, P_PREP_O, P_O, P_NORM2, P_W13, P_PREP_DOWN, P_DOWN,
       P_NORM_OUT, P_OUT };

// A phase's chunks: the first `big` chunks of `rows` rows each, then chunks of `small` rows
// up to the phase's last row (a product's output rows; other phases: chunk i is item i).
struct Phase {
  int type; int layer; int64_t chunks; int64_t rows; int64_t big = 0; int64_t small = 0;
  // Rows [o0, o1) of chunk i of a product with O output rows.
  inline void range(int64_t i, int64_t O, int64_t& o0, int64_t& o1) const {
    if (i < big) { o0 = i * rows; o1 = std::min(O, o0 + rows); return; }
    o0 = big * rows + (i - big) * small;
    o1 = std::min(O, o0 + small);
  }
};

class DecodePlan {
 public:
  DecodePlan(int64_t kind, int64_t act, std::vector<int64_t> dims, double eps,
             std::vector<torch::Tensor> tensors)
      : kind_(int(kind)), act_(int(act)), eps_(float(eps)), keep_(std::move(tensors)) {
    TORCH_CHECK(dims.size() == 7, "dims: D, n_heads, n_kv_heads, head_dim, hidden, vocab, layers");
    D_ = dims[0]; hq_ = dims[1]; hkv_ = dims[2]; hd_ = dims[3]; H_ = dims[4]; V_ = dims[5];
    L_ = dims[6];
    TORCH_CHECK(D_ % 32 == 0 && H_ % 32 == 0 && hq_ * hd_ % 32 == 0,
                "widths must be multiples of 32");
    TORCH_CHECK(int64_t(keep_.size()) == 10 * L_ + 6, "tensors: 10 per layer, then 6");
    // Matrix i of `tensors` (weights, then scales), one of O output rows.
    auto mat = [&](int64_t i, int64_t O) {
      Mat m;
      const auto& w = keep_[i];
      const auto& s = keep_[i + 1];
      m.kind = kind_; m.w = w.data_ptr();
      if (kind_ == W_Q8) {  // q8_pack's blocks: [O/16, G, 512] and [O/16, G, 16]
        TORCH_CHECK(w.is_contiguous() && w.dim() == 3 && w.scalar_type() == torch::kUInt8 &&
                    w.size(0) == (O + 15) / 16 && w.size(2) == 512 && s.is_contiguous() &&
                    s.scalar_type() == torch::kFloat16 && s.dim() == 3 &&
                    s.size(0) == w.size(0) && s.size(1) == w.size(1) && s.size(2) == 16,
                    "q8_0 weights in q8_pack's blocks");
        m.O = O; m.K = 32 * w.size(1);
        m.pw = w.data_ptr<uint8_t>();
        m.ps = reinterpret_cast<const uint16_t*>(s.data_ptr<at::Half>());
        return m;
      }
      TORCH_CHECK(w.is_contiguous() && w.dim() == 2, "weights must be contiguous matrices");
      m.O = w.size(0); m.K = w.size(1);
      if (kind_ == W_I8) {
        TORCH_CHECK(w.scalar_type() == torch::kInt8 && s.scalar_type() == torch::kFloat16 &&
                    s.is_contiguous() && s.size(0) == m.O && s.size(1) == m.K / 32, "int8 weights");
        m.s = reinterpret_cast<const uint16_t*>(s.data_ptr<at::Half>());
      } else {
        TORCH_CHECK(w.scalar_type() == dtype_of(kind_), "weight dtype does not match the kind");
      }
      return m;
    };
    auto f32 = [&](int64_t i, int64_t n) {
      TORCH_CHECK(keep_[i].scalar_type() == torch::kFloat32 && keep_[i].is_contiguous() &&
                  keep_[i].numel() == n, "float32 vector expected");
      return keep_[i].data_ptr<float>();
    };
    const int64_t QKV = (hq_ + 2 * hkv_) * hd_;
    for (int64_t l = 0; l < L_; ++l) {
      const int64_t b = 10 * l;
      PlanLayer pl;
      pl.n1 = f32(b, D_); pl.n2 = f32(b + 1, D_);
      pl.qkv = mat(b + 2, QKV); pl.o = mat(b + 4, D_); pl.w13 = mat(b + 6, 2 * H_);
      pl.down = mat(b + 8, D_);
      TORCH_CHECK(pl.qkv.O == QKV && pl.qkv.K == D_ && pl.o.O == D_ && pl.o.K == hq_ * hd_ &&
                  pl.w13.O == 2 * H_ && pl.w13.K == D_ && pl.down.O == D_ && pl.down.K == H_,
                  "layer shapes do not match");
      layers_.push_back(pl);
    }
    const int64_t t = 10 * L_;
    norm_ = f32(t, D_);
    out_ = mat(t + 1, V_);
    TORCH_CHECK(out_.O == V_ && out_.K == D_, "output shape");
    const auto& emb = keep_[t + 3];
    TORCH_CHECK(emb.is_contiguous() && emb.size(0) == V_ && emb.size(1) == D_, "embedding shape");
    TORCH_CHECK(emb.scalar_type() == dtype_of(act_),
                "the embedding's dtype is the activations'");
    emb_ = emb.data_ptr();
    TORCH_CHECK(keep_[t + 4].size(1) == hd_ && keep_[t + 5].size(1) == hd_, "rope tables");
    cos_ = f32(t + 4, keep_[t + 4].numel()); sin_ = f32(t + 5, keep_[t + 5].numel());
    S_ = keep_[t + 4].size(0);
    // Scratch for up to 16 rows, rows padded by 16 floats (see padded_rows).
    const int64_t R = 16;
    const auto f = torch::TensorOptions().dtype(torch::kFloat32);
    ldD_ = D_ + 16; ldA_ = hq_ * hd_ + 16; ldH_ = H_ + 16; ldQKV_ = QKV; ld13_ = 2 * H_;
    x_ = torch::zeros({R, ldD_}, f); h_ = torch::zeros({R, ldD_}, f);
    xn_ = torch::zeros({R, ldD_}, f); attn_ = torch::zeros({R, ldA_}, f);
    act_buf_ = torch::zeros({R, ldH_}, f); qkv_ = torch::zeros({R, QKV}, f);
    w13o_ = torch::zeros({R, 2 * H_}, f); tmp_ = torch::zeros({R, ldD_}, f);
    const int64_t Kmax = std::max(D_, std::max(H_, hq_ * hd_));
    q_ = torch::zeros({R, Kmax}, torch::TensorOptions().dtype(torch::kInt8));
    d_ = torch::zeros({R, Kmax / 32}, f);
    c_ = torch::zeros({R, Kmax / 32}, torch::TensorOptions().dtype(torch::kInt32));
    b_ = torch::zeros({R, Kmax + 32}, torch::TensorOptions().dtype(torch::kInt16));
    counters_.reset(new PhaseCounter[9 * L_ + 3]);
  }

  torch::Tensor step(torch::Tensor tokens, torch::Tensor positions, std::vector<torch::Tensor> kv) {
    // One step at a time per plan: the scratch rows and phase counters are the plan's.
    std::lock_guard<std::mutex> hold(busy_);
    TORCH_CHECK(tokens.scalar_type() == torch::kInt64 && positions.scalar_type() == torch::kInt64,
                "int64 tokens and positions");
    tokens = tokens.contiguous(); positions = positions.contiguous();
    const int64_t B = tokens.numel();
    TORCH_CHECK(B >= 1 && B <= 16 && positions.numel() == B, "1-16 rows");
    TORCH_CHECK(int64_t(kv.size()) == L_, "one cache tensor per layer");
    const int64_t* tok = tokens.data_ptr<int64_t>();
    const int64_t* pos = positions.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(tok[b] >= 0 && tok[b] < V_, "token out of range");
      TORCH_CHECK(pos[b] >= 0 && pos[b] < S_, "position out of range");
    }
    for (auto& t : kv) {
      TORCH_CHECK(t.is_contiguous() && t.dim() == 5 && t.size(0) == 2 && t.size(1) >= B &&
                  t.size(2) == hkv_ && t.size(4) == hd_, "cache layout [2, rows, kv, seq, hd]");
      for (int64_t b = 0; b < B; ++b) TORCH_CHECK(pos[b] < t.size(3), "position beyond the cache");
    }
    const auto ct = kv[0].scalar_type();
    const int cdt = ct == torch::kFloat32 ? D_F32 : ct == torch::kFloat16 ? D_F16 : D_BF16;
    TORCH_CHECK(ct == torch::kFloat32 || ct == torch::kFloat16 || ct == torch::kBFloat16,
                "cache dtype");
    auto logits = torch::empty({B, V_}, torch::TensorOptions().dtype(torch::kFloat32));

    // Phases and their chunks.
    std::vector<Phase> phases;
    // A product's output rows in chunks of about 1 MiB of weights, and its last rows in
    // chunks of about 64 KiB, 4 per thread, so the threads finish the phase together.
    // A thread streams a chunk's weights in memory order; 64 KiB chunks, alternating
    // between 2 threads, read 31-34 GB/s where 1 MiB chunks read 41-44 (a 512 MiB
    // float16 matrix against one row, 2 threads, the same run: stream restarts cost).
    // Several activation rows: chunks of a multiple of 48 rows (the AVX-512 tiles take 3
    // weight rows, the AVX2 ones 2), no one-row tile at a chunk's end.
    const int64_t unit = B > 1 ? 48 : 16;
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    auto rows_for = [&](const Mat& m, int64_t factor, int64_t bytes) {
      const int64_t rb = std::max<int64_t>(m.row_bytes() * factor, 1);
      return std::max<int64_t>(unit, (bytes / rb + unit - 1) / unit * unit);
    };
    auto prod = [&](int type, int l, const Mat& m, int64_t O, int64_t factor) {
      const int64_t small = rows_for(m, factor, 65536), rows = rows_for(m, factor, 1 << 20);
      const int64_t head = std::max<int64_t>(0, O - 4 * threads * small);
      const int64_t big = head / rows;  // whole big chunks only; the rest in small ones
      const int64_t rest = O - big * rows;
      phases.push_back({type, l, big + (rest + small - 1) / small, rows, big, small});
    };
    const bool prep = kind_ == W_Q8 || (kind_ == W_BF16 && act_ == D_BF16);
    phases.push_back({P_EMBED, 0, B, 1});
    for (int l = 0; l < int(L_); ++l) {
      const PlanLayer& pl = layers_[l];
      phases.push_back({P_NORM1, l, B, 1});
      prod(P_QKV, l, pl.qkv, pl.qkv.O, 1);
      phases.push_back({P_ATTN, l, B * hkv_, 1});
      phases.push_back({P_PREP_O, l, prep ? B : 0, 1});
      prod(P_O, l, pl.o, D_, 1);
      phases.push_back({P_NORM2, l, B, 1});
      prod(P_W13, l, pl.w13, H_, 2);
      phases.push_back({P_PREP_DOWN, l, prep ? B : 0, 1});
      prod(P_DOWN, l, pl.down, D_, 1);
    }
    phases.push_back({P_NORM_OUT, 0, B, 1});
    prod(P_OUT, 0, out_, V_, 1);
    const int64_t P = int64_t(phases.size());
    for (int64_t p = 0; p < P; ++p) {
      counters_[p].next.store(0, std::memory_order_relaxed);
      counters_[p].done.store(0, std::memory_order_relaxed);
    }
    std::vector<void*> kvp(L_);
    for (int64_t l = 0; l < L_; ++l) kvp[l] = kv[l].data_ptr();
    const int64_t S = kv[0].size(3), rows_c = kv[0].size(1);
    Ctx c{B, tok, pos, kvp.data(), cdt, S, rows_c, logits.data_ptr<float>()};

    auto work = [&](int64_t, int64_t) {
      for (int64_t p = 0; p < P; ++p) {
        PhaseCounter& pc = counters_[p];
        const Phase& ph = phases[p];
        for (int64_t i; (i = pc.next.fetch_add(1, std::memory_order_relaxed)) < ph.chunks;) {
          run(ph, i, c);
          pc.done.fetch_add(1, std::memory_order_acq_rel);
        }
        // Wait for chunks that other threads hold; on a shared machine a holder may be
        // descheduled, so after a short spin give the core away.
        for (int spins = 0; pc.done.load(std::memory_order_acquire) < ph.chunks; ++spins) {
          if (spins < 4000) _mm_pause();
          else std::this_thread::yield();
        }
      }
    };
    if (threads == 1) work(0, 1);
    else at::parallel_for(0, threads, 1, work);
    return logits;
  }

 private:
  struct Ctx {
    int64_t B; const int64_t* tok; const int64_t* pos; void** kv; int cdt; int64_t S, crows;
    float* logits;
  };

  // A product's input rows; the bfloat16 bits only for rows of bfloat16 values.
  Rows rows_of(float* x, int64_t ld) const {
    Rows r;
    r.x = x; r.ld = ld;
    r.q = q_.data_ptr<int8_t>(); r.d = d_.data_ptr<float>();
    r.c = c_.data_ptr<int32_t>();
    if (kind_ == W_BF16 && act_ == D_BF16) {
      r.b = reinterpret_cast<uint16_t*>(b_.data_ptr<int16_t>());
      r.ldb = b_.size(1);
    }
    return r;
  }

  // Row r of `src` normalised into xn (RMSNorm, float32 sums), rounded as the model's
  // RMSNorm rounds, and prepared for the next product (int8 rows, bfloat16 bits).
  void norm_row(const float* src, const float* w, int64_t r) {
    const float* x = src + r * ldD_;
    float* out = xn_.data_ptr<float>() + r * ldD_;
    const float inv = 1.0f / std::sqrt(dot8(x, x, D_) / float(D_) + eps_);
    norm_scale(act_, x, inv, w, out, D_);
    fill_extras(kind_, act_, out, D_, r, rows_of(out, ldD_));
  }

  void run(const Phase& ph, int64_t i, const Ctx& c) {
    float* x = x_.data_ptr<float>();
    float* h = h_.data_ptr<float>();
    float* xn = xn_.data_ptr<float>();
    const int64_t B = c.B;
    switch (ph.type) {
      case P_EMBED: {
        for (int64_t k = 0; k < D_; ++k)
          x[i * ldD_ + k] = load_as_float(act_, emb_, c.tok[i] * D_ + k);
        return;
      }
      case P_NORM1: norm_row(x, layers_[ph.layer].n1, i); return;
      case P_NORM2: norm_row(h, layers_[ph.layer].n2, i); return;
      case P_NORM_OUT: norm_row(x, norm_, i); return;
      case P_QKV: {
        const Mat& m = layers_[ph.layer].qkv;
        int64_t o0, o1;
        ph.range(i, m.O, o0, o1);
        const Rows a = rows_of(xn, ldD_);
        float* out = qkv_.data_ptr<float>();
        mat_rows(m, a, B, o0, o1, out, ldQKV_);
        for (int64_t r = 0; r < B; ++r) round_span(act_, out + r * ldQKV_ + o0, o1 - o0);
        return;
      }
      case P_ATTN: attend(ph.layer, i / hkv_, i % hkv_, c); return;
      case P_PREP_O: {
        float* a = attn_.data_ptr<float>();
        fill_extras(kind_, act_, a + i * ldA_, hq_ * hd_, i, rows_of(a, ldA_));
        return;
      }
      case P_PREP_DOWN: {
        float* a = act_buf_.data_ptr<float>();
        fill_extras(kind_, act_, a + i * ldH_, H_, i, rows_of(a, ldH_));
        return;
      }
      case P_O:
      case P_DOWN: {
        const bool o = ph.type == P_O;
        const Mat& m = o ? layers_[ph.layer].o : layers_[ph.layer].down;
        float* in = o ? attn_.data_ptr<float>() : act_buf_.data_ptr<float>();
        const int64_t ld = o ? ldA_ : ldH_;
        const float* res = o ? x : h;
        float* dst = o ? h : x;
        int64_t o0, o1;
        ph.range(i, D_, o0, o1);
        const Rows a = rows_of(in, ld);
        float* t = tmp_.data_ptr<float>();
        mat_rows(m, a, B, o0, o1, t, ldD_);
        for (int64_t r = 0; r < B; ++r)
          add_rounded(act_, res + r * ldD_ + o0, t + r * ldD_ + o0, dst + r * ldD_ + o0, o1 - o0);
        return;
      }
      case P_W13: {
        const Mat& m = layers_[ph.layer].w13;
        int64_t o0, o1;
        ph.range(i, H_, o0, o1);
        const Rows a = rows_of(xn, ldD_);
        float* t = w13o_.data_ptr<float>();
        mat_rows(m, a, B, o0, o1, t, ld13_);
        mat_rows(m, a, B, H_ + o0, H_ + o1, t, ld13_);
        float* dst = act_buf_.data_ptr<float>();
        for (int64_t r = 0; r < B; ++r)
          silu_mul(act_, t + r * ld13_ + o0, t + r * ld13_ + H_ + o0, dst + r * ldH_ + o0, o1 - o0);
        return;
      }
      case P_OUT: {
        int64_t o0, o1;
        ph.range(i, V_, o0, o1);
        const Rows a = rows_of(xn, ldD_);
        mat_rows(out_, a, B, o0, o1, c.logits, V_);
        for (int64_t r = 0; r < B; ++r) round_span(act_, c.logits + r * V_ + o0, o1 - o0);
        return;
      }
    }
  }

  // Row b, kv head g: rotate that head's keys and its query heads (the attention scale
  // folded into the queries' table), write keys and values at the row's position, and
  // attend over positions 0..pos[b] of the row's cache in float32.
  void attend(int layer, int64_t b, int64_t g, const Ctx& c) {
    const int64_t rep = hq_ / hkv_, hd = hd_, p = c.pos[b], T = p + 1;
    const float* row = qkv_.data_ptr<float>() + b * ldQKV_;
    const float* cs = cos_ + p * hd;
    const float* sn = sin_ + p * hd;
    const float scale = 1.0f / std::sqrt(float(hd));
    thread_local std::vector<float> buf;
    if (int64_t(buf.size()) < rep * hd + rep * T + hd) buf.resize(rep * hd + rep * T + hd);
    float* q = buf.data();
    float* sc = q + rep * hd;
    float* kf = sc + rep * T;
    for (int64_t j = 0; j < rep; ++j) {
      const float* x = row + (g * rep + j) * hd;
      for (int64_t k = 0; k < hd; k += 2) {
        q[j * hd + k] = x[k] * (cs[k] * scale) + x[k + 1] * (sn[k] * scale);
        q[j * hd + k + 1] = x[k + 1] * (cs[k + 1] * scale) + x[k] * (sn[k + 1] * scale);
      }
    }
    void* kv = c.kv[layer];
    const int64_t plane = c.crows * hkv_ * c.S * hd;  // keys, then values
    const int64_t base = (b * hkv_ + g) * c.S * hd;
    {
      const float* xk = row + (hq_ + g) * hd;
      const float* xv = row + (hq_ + hkv_ + g) * hd;
      const int64_t at = base + p * hd;
      for (int64_t k = 0; k < hd; k += 2) {
        store_from_float(c.cdt, kv, at + k, xk[k] * cs[k] + xk[k + 1] * sn[k]);
        store_from_float(c.cdt, kv, at + k + 1, xk[k + 1] * cs[k + 1] + xk[k] * sn[k + 1]);
      }
      for (int64_t k = 0; k < hd; ++k) store_from_float(c.cdt, kv, plane + at + k, xv[k]);
    }
    for (int64_t t = 0; t < T; ++t) {
      const float* kt;
      if (c.cdt == D_F32) kt = static_cast<const float*>(kv) + base + t * hd;
      else {
        load_span(c.cdt, kv, base + t * hd, kf, hd);
        kt = kf;
      }
      for (int64_t j = 0; j < rep; ++j) sc[j * T + t] = dot8(q + j * hd, kt, hd);
    }
    float* out = attn_.data_ptr<float>() + b * ldA_ + g * rep * hd;
    for (int64_t j = 0; j < rep; ++j) {
      float* s = sc + j * T;
      float mx = s[0];
      for (int64_t t = 1; t < T; ++t) mx = std::max(mx, s[t]);
      const float inv = 1.0f / exp_span(s, mx, T);
      for (int64_t t = 0; t < T; ++t) s[t] *= inv;
      float* oj = out + j * hd;
      for (int64_t k = 0; k < hd; ++k) oj[k] = 0.0f;
    }
    for (int64_t t = 0; t < T; ++t) {
      const float* vt;
      if (c.cdt == D_F32) vt = static_cast<const float*>(kv) + plane + base + t * hd;
      else {
        load_span(c.cdt, kv, plane + base + t * hd, kf, hd);
        vt = kf;
      }
      for (int64_t j = 0; j < rep; ++j) {
        const float pj = sc[j * T + t];
        float* oj = out + j * hd;
        for (int64_t k = 0; k < hd; ++k) oj[k] += pj * vt[k];
      }
    }
    round_span(act_, out, rep * hd);
  }

  int kind_, act_;
  float eps_;
  std::vector<torch::Tensor> keep_;
  std::vector<PlanLayer> layers_;
  const float* norm_ = nullptr;
  Mat out_;
  const void* emb_ = nullptr;
  const float* cos_ = nullptr;
  const float* sin_ = nullptr;
  int64_t D_, hq_, hkv_, hd_, H_, V_, L_, S_;
  int64_t ldD_, ldA_, ldH_, ldQKV_, ld13_;
  torch::Tensor x_, h_, xn_, attn_, act_buf_, qkv_, w13o_, tmp_, q_, d_, c_, b_;
  std::unique_ptr<PhaseCounter[]> counters_;
  std::mutex busy_;
};

// The fused step's SiLU(gate) * up with its roundings (silu_mul), for the tests: float32
// tensors of one shape, dt a D_* code; the result as float32.
torch::Tensor silu_mul_rounded(torch::Tensor gate, torch::Tensor up, int64_t dt) {
  TORCH_CHECK(gate.scalar_type() == torch::kFloat32 && up.scalar_type() == torch::kFloat32 &&
              gate.sizes() == up.sizes() && dt >= D_F32 && dt <= D_BF16, "float32 gate and up");
  gate = gate.contiguous(); up = up.contiguous();
  auto out = torch::empty_like(gate);
  silu_mul(int(dt), gate.data_ptr<float>(), up.data_ptr<float>(), out.data_ptr<float>(),
           gate.numel());
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm);
  m.def("silu_mul_rounded", &silu_mul_rounded);
  m.def("int8_group_mm", &int8_group_mm);
  m.def("half_mm", &half_mm);
  m.def("half_mv", &half_mv);
  m.def("q8_pack", &q8_pack);
  m.def("q8_packed_mm", &q8_packed_mm);
  m.def("isa", []() { return std::string(LLAMA_KERNELS_ISA); });
  // module_local: both builds may be loaded in one process (the tests take each), and a
  // type registered globally by the first would fail the second's import.
  pybind11::class_<DecodePlan>(m, "DecodePlan", pybind11::module_local())
      .def(pybind11::init<int64_t, int64_t, std::vector<int64_t>, double,
                          std::vector<torch::Tensor>>())
      // The step touches no Python object: other Python threads (a worker's heartbeat,
      // requests being added) run meanwhile, as they did between ATen's operators.
      .def("step", &DecodePlan::step, pybind11::call_guard<pybind11::gil_scoped_release>());
}
"""

_lock = threading.Lock()
_kernel = None  # the module kernel() gives, False when none can be built here
_modules: dict[str, object] = {}  # per ISA: the built module, or False

# The two builds of _SOURCE. The AVX-512 one is loaded only where the CPU lists every flag
# it is compiled for; an AVX2-only host (CI may be one) never builds it.
NAMES = {"avx2": "llama_cpu_kernels_v17", "avx512": "llama_cpu_kernels_avx512_v17"}
_BASE_FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"]
_ISA_FLAGS = {
    "avx2": _BASE_FLAGS,
    "avx512": [
        *_BASE_FLAGS,
        *("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mavx512vnni"),
    ],
}
_CPU_NEEDS = {
    "avx2": {"avx2", "fma", "f16c"},
    "avx512": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
    | {"avx512_bf16", "avx512_vnni"},
}


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def supported(isa: str) -> bool:
    """Whether this CPU runs the build for `isa` ("avx2" or "avx512")."""
    return _CPU_NEEDS[isa] <= _cpu_flags()


def preferred_isa() -> str | None:
    """The build `kernel()` loads here: AVX-512 where the CPU has it, unless
    LLAMA_CPU_KERNELS_ISA=avx2 asks for the AVX2 one (tests and A/B runs); None where
    neither runs or LLAMA_CPU_KERNELS=0."""
    if os.environ.get("LLAMA_CPU_KERNELS", "1") == "0":
        return None
    want = os.environ.get("LLAMA_CPU_KERNELS_ISA", "")
    for isa in ("avx512", "avx2"):
        if supported(isa) and want in ("", isa):
            return isa
    return None


def kernel():
    """The compiled module for this CPU, or None where it cannot be built."""
    global _kernel
    if _kernel is None:
        isa = preferred_isa()
        _kernel = (module(isa) if isa else None) or False
        if not _kernel and isa == "avx512":
            _kernel = module("avx2") or False
    return _kernel or None


def module(isa: str):
    """The build of the kernels for `isa`, or None where this CPU cannot run it or it cannot
    be built (tests take each build in turn through this)."""
    if isa not in _modules:
        with _lock:
            if isa not in _modules:
                _modules[isa] = supported(isa) and _build(isa)
    return _modules[isa] or None


def _ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH; a venv that is not activated (`.venv/bin/pytest`,
    the worker started by path) has the pinned `ninja` package's binary off PATH."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build(isa: str):
    _ninja_on_path()
    try:
        from torch.utils.cpp_extension import _get_build_directory, load_inline

        build = Path(_get_build_directory(NAMES[isa], verbose=False))
        with _build_lock(build):
            return load_inline(
                name=NAMES[isa],
                cpp_sources=[_SOURCE],
                extra_cflags=_ISA_FLAGS[isa],
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
    except Exception as exc:  # no compiler, no headers: ATen's paths still work
        logger.warning("CPU kernels (%s) not built (%s); using ATen's", isa, exc)
        return False


@contextlib.contextmanager
def _build_lock(build: Path):
    """One process at a time loads (and, the first time, builds) the kernels of a folder.

    torch's own lock is a file it creates and deletes, and waits on for as long as it
    exists: a process killed inside `load_inline` (a worker's `kill -9`, a test's timeout)
    leaves it behind, and every later load on the machine waited forever. The lock here is
    an flock, which the system releases when its holder dies; holding it, no other loader
    is inside torch's, so a torch lock found then is a dead process's and is removed."""
    build.mkdir(parents=True, exist_ok=True)
    with open(build / "portal.flock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            stale = build / "lock"
            if stale.exists():
                logger.warning("removing a lock left by a killed kernel build in %s", build)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
