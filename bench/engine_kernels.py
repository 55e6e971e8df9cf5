"""One-row (decode at batch 1) half-precision matmuls against the memory bandwidth.

    .venv/bin/python bench/engine_kernels.py [--threads N] [--layers 3] [--rounds 3]

Weights of `--layers` layers of the 1B shape (dim 2048, hidden 5632: fused q/k/v
6144x2048, wo 2048x2048, fused gate/up 11264x2048, w2 2048x5632; 3 layers = 308 MB in
float16, ten times the L3 here, so every pass reads memory) are multiplied by one float32
row, each matrix once per pass, by ATen (`F.linear` in the weights' dtype, what batch-1
half precision took before), `cpu_kernels.half_mm` (the 2-16-row kernel given one row) and
`cpu_kernels.half_mv` (the one-row kernel). Each figure is weight bytes over the best of
7 passes; every round first measures the read bandwidth (best of 5 `sum`s over 256 MiB
of float32) and each method's share is of the best read bandwidth of all rounds: the
machine is shared, and the largest figure is the strictest denominator.
"""

from __future__ import annotations

import argparse
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
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    mod = cpu_kernels.kernel()
    if mod is None:
        sys.exit("the CPU kernels could not be built here (see cpu_kernels)")
    gen = torch.Generator().manual_seed(0)
    big = torch.rand(64 << 20, generator=gen)  # 256 MiB of float32
    xs = {k: torch.randn(1, k, generator=gen) for k in (2048, 5632)}
    limit = 0.0
    for dtype in (torch.float16, torch.bfloat16) if ns.only != "int8" else ():
        ws = [
            (torch.randn(o, k, generator=gen) * 0.02).to(dtype)
            for _ in range(ns.layers)
            for o, k in SHAPES
        ]
        nbytes = sum(w.nbytes for w in ws)
        methods = {
            "aten F.linear": lambda ws=ws: [F.linear(xs[w.shape[1]].to(w.dtype), w) for w in ws],
            "half_mm": lambda ws=ws: [mod.half_mm(xs[w.shape[1]], w) for w in ws],
            "half_mv": lambda ws=ws: [mod.half_mv(xs[w.shape[1]], w) for w in ws],
        }
        figures: dict[str, list[float]] = {m: [] for m in methods}
        read: list[float] = []
        for _ in range(ns.rounds):
            read.append(big.nbytes / best(big.sum, 5))
            for name, f in methods.items():
                figures[name].append(nbytes / best(f, 7))
        limit = max(limit, *read)
        print(
            f"{str(dtype).removeprefix('torch.')}: {nbytes / 1e6:.0f} MB of weights, "
            f"{ns.threads} threads; read bandwidth {limit / 1e9:.1f} GB/s "
            f"(rounds {', '.join(f'{r / 1e9:.1f}' for r in read)})"
        )
        for name, vals in figures.items():
            print(
                f"  {name:14s} {max(vals) / 1e9:5.1f} GB/s = {max(vals) / limit:4.0%} "
                f"(rounds {', '.join(f'{v / 1e9:.1f}' for v in vals)})"
            )
    if ns.only != "half":
        if not limit:
            limit = max(big.nbytes / best(big.sum, 5) for _ in range(ns.rounds))
            print(f"read bandwidth {limit / 1e9:.1f} GB/s")
        int8_figures(mod, ns, gen, limit)


def int8_figures(mod, ns, gen, limit: float) -> None:
    """int8 weights (float16 scale per 32 columns) at 1 and 8 rows: the weight-only kernel
    (float32 activations) against int8 x int8 (activations rounded to int8 per group)."""
    from inference.llama import int8_groups

    mats = [
        int8_groups.quantize(torch.randn(o, k, generator=gen) * 0.02)
        for _ in range(ns.layers)
        for o, k in SHAPES
    ]
    nbytes = sum(q.nbytes + s.nbytes for q, s in mats)
    for rows in (1, 8):
        xs = {k: torch.randn(rows, k, generator=gen) for k in (2048, 5632)}
        methods = {
            "int8_group_mm": lambda xs=xs: [
                mod.int8_group_mm(xs[q.shape[1]], q, s, 32) for q, s in mats
            ],
            "int8_q8_mm": lambda xs=xs: [mod.int8_q8_mm(xs[q.shape[1]], q, s) for q, s in mats],
        }
        figures: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(ns.rounds):
            for name, f in methods.items():
                figures[name].append(nbytes / best(f, 7))
        print(f"int8, {rows} row(s): {nbytes / 1e6:.0f} MB of weights and scales")
        for name, vals in figures.items():
            print(
                f"  {name:14s} {max(vals) / 1e9:5.1f} GB/s = {max(vals) / limit:4.0%} "
                f"(rounds {', '.join(f'{v / 1e9:.1f}' for v in vals)})"
            )


if __name__ == "__main__":
    main()
