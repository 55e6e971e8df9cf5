"""Arithmetic peak of one core here: zmm FMAs, vpdpbusd and vdpbf16ps per nanosecond.

    .venv/bin/python bench/cpu_peak.py

What the few-row kernels' figures are judged against (`inference/llama/README.md`): a
loop of 12 independent accumulators per instruction (more than latency x throughput
needs), compiled unrolled with -O3 -march=native by the system's g++, one thread. Prints
instructions per ns and the multiply-adds per second they make (16 float32 lanes an
FMA, 64 int8 products a vpdpbusd, 32 bfloat16 products a vdpbf16ps). Needs AVX-512 with
VNNI and BF16; elsewhere it says so and exits.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = r"""
#include <immintrin.h>
#include <chrono>
#include <cstdio>
template <class V, class I, class F> static double run(I init, F step, long n) {
  V a[12];
  for (int i = 0; i < 12; ++i) a[i] = init(i);
  auto t = std::chrono::steady_clock::now();
  for (long k = 0; k < n; ++k) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = step(a[i]);
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  volatile char sink = 0;
  for (int i = 0; i < 12; ++i) sink += reinterpret_cast<const char*>(&a[i])[i];
  return n * 12 / s / 1e9;
}
int main() {
  const long n = 20000000;
  const __m512 x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(1e-9f);
  double f = run<__m512>([](int i) { return _mm512_set1_ps(i * 1e-9f); },
                         [&](__m512 a) { return _mm512_fmadd_ps(a, x, y); }, n);
  const __m512i u = _mm512_set1_epi8(3), s = _mm512_set1_epi8(-2);
  double d = run<__m512i>([](int i) { return _mm512_set1_epi32(i); },
                          [&](__m512i a) { return _mm512_dpbusd_epi32(a, u, s); }, n);
  const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80);
  double h = run<__m512>([](int i) { return _mm512_set1_ps(i); },
                         [&](__m512 a) { return _mm512_dpbf16_ps(a, b, b); }, n);
  std::printf("zmm FMA    %.2f per ns, %.1f GMAC/s\n", f, f * 16);
  std::printf("vpdpbusd   %.2f per ns, %.1f GMAC/s\n", d, d * 64);
  std::printf("vdpbf16ps  %.2f per ns, %.1f GMAC/s\n", h, h * 32);
}
"""


def main() -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if not all(f in flags for f in ("avx512f", "avx512_vnni", "avx512_bf16")):
        sys.exit("this CPU lacks AVX-512 with VNNI and BF16: nothing to measure")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "peak.cpp", Path(tmp) / "peak"
        src.write_text(SOURCE)
        subprocess.run(["g++", "-O3", "-march=native", "-o", str(exe), str(src)], check=True)
        print("one core, 12 independent accumulators:")
        sys.stdout.flush()
        subprocess.run([str(exe)], check=True)


if __name__ == "__main__":
    main()
