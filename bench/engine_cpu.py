"""CPU decode throughput of the LLaMA engine against transformers' `generate`.

    .venv/bin/python bench/engine_cpu.py [--threads N] [--new-tokens 64] [--repeats 3]

A ~100M-parameter LLaMA with random weights (dim 768, 8 layers, vocab 32000), float32,
the same weights and thread count for both; the engine's weights in the form
`Llama.load` gives them (fused, packed for oneDNN). For llama.cpp and the other
precisions see bench/engine_vs_llamacpp.py. Decode speed comes from the time of each
decode step (the engine's `BatchDecoder.step`, transformers' steps timestamped by a
stopping criterion), prefill left out, the median over `--repeats` runs: the machine is
shared, and a median ignores the steps where another process took the cores. Prints:

- engine and transformers decode tok/s at batch 1 and batch 8, and their ratio;
- the engine's batch-8 throughput over its batch-1 throughput;
- the fraction of the memory-bandwidth limit reached at batch 1: weight bytes read per
  token times tokens per second, over the bandwidth of a large memcpy (read + write
  bytes per second) measured here with the same threads.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.llama.generation import BatchDecoder, SamplingParams, generate
from inference.llama.hf import to_transformers
from inference.llama.model import ModelArgs, Transformer, init_weights

ARGS = ModelArgs(
    dim=768, n_layers=8, n_heads=12, vocab_size=32000, multiple_of=256, max_seq_len=1024
)


def memcpy_bandwidth(nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """Bytes moved (read + write) per second by a large tensor copy."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def engine_steps(model: Transformer, prompts: list[list[int]], new_tokens: int) -> list[float]:
    """Seconds of each decode step (the first step, the prefill, left out)."""
    decoder = BatchDecoder(
        model, None, max_batch_size=len(prompts), max_seq_len=len(prompts[0]) + new_tokens
    )
    for p in prompts:
        decoder.add(p, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
    times = []
    while decoder.has_work():
        t = time.perf_counter()
        decoder.step()
        times.append(time.perf_counter() - t)
    return times[1:]


def transformers_steps(hf, prompts: torch.Tensor, new_tokens: int) -> list[float]:
    """Seconds between consecutive tokens of transformers' generate (prefill left out).

    A stopping criterion is called once per generated token, which timestamps the steps.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList

    stamps: list[float] = []

    class Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    with torch.inference_mode():
        hf.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            stopping_criteria=StoppingCriteriaList([Stamp()]),
        )
    return [b - a for a, b in itertools.pairwise(stamps)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)

    model = init_weights(Transformer(ARGS), seed=0).eval().requires_grad_(False)
    hf = to_transformers(model)
    # The inference form Llama.load builds: fused projections, oneDNN-packed weights.
    model.prepare(pack=True)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, ARGS.vocab_size, (8, ns.prompt_len), generator=gen)
    n_params = ARGS.n_params()
    print(f"model: {n_params / 1e6:.1f}M parameters, float32, {ns.threads} threads")

    # Same weights, same greedy tokens: a check that the comparison is fair.
    ours = [
        c.tokens
        for c in generate(
            model, None, prompts.tolist(), SamplingParams(max_new_tokens=16, ignore_eos=True)
        )
    ]
    with torch.inference_mode():
        theirs = hf.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            pad_token_id=0,
        )
    theirs = theirs[:, ns.prompt_len :].tolist()
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(f"greedy tokens identical to transformers: {same}/8 sequences")

    # Interleave the two so that load from other processes hits both alike; the median
    # step time over all repeats is robust to the odd descheduled step.
    steps: dict[tuple[str, int], list[float]] = {}
    for _ in range(ns.repeats):
        for batch in (1, 8):
            rows = prompts[:batch]
            steps.setdefault(("engine", batch), []).extend(
                engine_steps(model, rows.tolist(), ns.new_tokens)
            )
            steps.setdefault(("hf", batch), []).extend(transformers_steps(hf, rows, ns.new_tokens))
    rates = {k: k[1] / median(v) for k, v in steps.items()}
    means = {k: k[1] * len(v) / sum(v) for k, v in steps.items()}
    for batch in (1, 8):
        e, h = rates["engine", batch], rates["hf", batch]
        print(
            f"batch {batch}: engine {e:7.1f} tok/s (mean {means['engine', batch]:7.1f})   "
            f"transformers {h:7.1f} tok/s (mean {means['hf', batch]:7.1f})   ratio {e / h:.2f}x"
        )
    print(f"engine batch-8 / batch-1 throughput: {rates['engine', 8] / rates['engine', 1]:.2f}x")
    bw = memcpy_bandwidth()
    # Per token every weight is read once, except the embedding table (one row).
    weight_bytes = model.weight_bytes()
    achieved = weight_bytes * rates["engine", 1]
    print(
        f"memcpy bandwidth {bw / 1e9:.1f} GB/s; batch-1 weight traffic "
        f"{achieved / 1e9:.1f} GB/s = {achieved / bw:.0%} of the memcpy limit"
    )


if __name__ == "__main__":
    main()
