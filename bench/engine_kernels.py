"""One-row (decode at batch 1) half-precision matmuls against the memory bandwidth.

    .venv/bin/python bench/engine_kernels.py [--threads N] [--layers 3] [--rounds 3]
        [--only half|int8] [--rows 1,8]

Each kernel is timed in every build this CPU runs (`cpu_kernels.module`: "avx2", and
"avx512" where the CPU has its flags), the activation rows rounded to the weights' dtype
first, as a half-precision model gives them (a bfloat16 row takes AVX-512's vdpbf16ps).

Weights of `--layers` layers of the 1B shape (dim 2048, hidden 5632: fused q/k/v
6144x2048, wo 2048x2048, fused gate/up 11264x2048, w2 2048x5632; 3 layers = 308 MB in
float16, ten times the L3 of the AVX2 host; the AVX-512 VM reports 300 MiB of L3, so use
--layers 6 there for figures from memory) are multiplied by `--rows` activation rows,
each matrix once per pass, by ATen (`F.linear` in the weights' dtype), oneDNN's packed
bfloat16 linear (where oneDNN runs bfloat16), `cpu_kernels.half_mv` (one row) or
`half_mm` (several) of each build. Each figure is weight bytes over the best of
7 passes; every round first measures the read bandwidth (best of 5 `sum`s over 256 MiB
of float32) and each method's share is of the best read bandwidth of all rounds: the
machine is shared, and the largest figure is the strictest denominator.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.llama import cpu_kernels

SHAPES = [(6144, 2048), (2048, 2048), (11264, 2048), (2048, 5632)]


def best(f, n: int) -> float:
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["half", "int8"], help="one of the two sections")
    ap.add_argument("--rows", default="1", help="activation rows of the half section: 1,8")
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    mods = {isa: m for isa in cpu_kernels.NAMES if (m := cpu_kernels.module(isa)) is not None}
    if not mods:
        sys.exit("the CPU kernels could not be built here (see cpu_kernels)")
    ns.mods = mods
    gen = torch.Generator().manual_seed(0)
    big = torch.rand(64 << 20, generator=gen)  # 256 MiB of float32
    limit = 0.0
    for dtype, rows in itertools.product(
        (torch.float16, torch.bfloat16) if ns.only != "int8" else (),
        [int(r) for r in ns.rows.split(",")],
    ):
        xs = {k: torch.randn(rows, k, generator=gen).to(dtype).float() for k in (2048, 5632)}
        ws = [
            (torch.randn(o, k, generator=gen) * 0.02).to(dtype)
            for _ in range(ns.layers)
            for o, k in SHAPES
        ]
        nbytes = sum(w.nbytes for w in ws)
        methods = {
            "aten F.linear": lambda ws=ws, xs=xs: [
                F.linear(xs[w.shape[1]].to(w.dtype), w) for w in ws
            ],
        }
        if dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in ws]
            methods["oneDNN packed"] = lambda ws=ws, xs=xs, packed=packed: [
                torch.ops.mkldnn._linear_pointwise(
                    xs[w.shape[1]].to(w.dtype), p, None, "none", [], ""
                )
                for w, p in zip(ws, packed, strict=True)
            ]
        for isa, mod in mods.items():
            fn = mod.half_mv if rows == 1 else mod.half_mm
            methods[f"{fn.__name__} {isa}"] = lambda ws=ws, xs=xs, fn=fn: [
                fn(xs[w.shape[1]], w) for w in ws
            ]
        figures: dict[str, list[float]] = {m: [] for m in methods}
        read: list[float] = []
        for _ in range(ns.rounds):
            read.append(big.nbytes / best(big.sum, 5))
            for name, f in methods.items():
                figures[name].append(nbytes / best(f, 7))
        limit = max(limit, *read)
        print(
            f"{str(dtype).removeprefix('torch.')}, {rows} row(s): {nbytes / 1e6:.0f} MB of "
            f"weights, {ns.threads} threads; read bandwidth {limit / 1e9:.1f} GB/s "
            f"(rounds {', '.join(f'{r / 1e9:.1f}' for r in read)})"
        )
        for name, vals in figures.items():
            print(
                f"  {name:22s} {max(vals) / 1e9:5.1f} GB/s = {max(vals) / limit:4.0%} "
                f"(rounds {', '.join(f'{v / 1e9:.1f}' for v in vals)})"
            )
    if ns.only != "half":
        if not limit:
            limit = max(big.nbytes / best(big.sum, 5) for _ in range(ns.rounds))
            print(f"read bandwidth {limit / 1e9:.1f} GB/s")
        int8_figures(ns, gen, limit)


def int8_figures(ns, gen, limit: float) -> None:
    """int8 weights (float16 scale per 32 columns) at 1 and 8 rows: the weight-only kernel
    (float32 activations) against int8 x int8 (activations rounded to int8 per group)."""
    from inference.llama import int8_groups

    mats = [
        int8_groups.quantize(torch.randn(o, k, generator=gen) * 0.02)
        for _ in range(ns.layers)
        for o, k in SHAPES
    ]
    # q8_0's copy in 16-row blocks (q8_pack: the same bytes, reordered)
    blocks = [(*int8_groups.pack(q, s), q.shape[0]) for q, s in mats]
    nbytes = sum(q.nbytes + s.nbytes for q, s in mats)
    for rows in (1, 8):
        xs = {k: torch.randn(rows, k, generator=gen) for k in (2048, 5632)}
        methods = {}
        for isa, mod in ns.mods.items():
            methods[f"int8_group_mm {isa}"] = lambda xs=xs, mod=mod: [
                mod.int8_group_mm(xs[q.shape[1]], q, s, 32) for q, s in mats
            ]
            methods[f"q8_packed_mm {isa}"] = lambda xs=xs, mod=mod: [
                mod.q8_packed_mm(xs[32 * pw.shape[1]], pw, ps, o) for pw, ps, o in blocks
            ]
        figures: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(ns.rounds):
            for name, f in methods.items():
                figures[name].append(nbytes / best(f, 7))
        print(f"int8, {rows} row(s): {nbytes / 1e6:.0f} MB of weights and scales")
        for name, vals in figures.items():
            print(
                f"  {name:22s} {max(vals) / 1e9:5.1f} GB/s = {max(vals) / limit:4.0%} "
                f"(rounds {', '.join(f'{v / 1e9:.1f}' for v in vals)})"
            )


if __name__ == "__main__":
    main()
