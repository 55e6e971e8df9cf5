"""Tensor-parallel serving checks for a session lent GPUs (issue 17), in a few minutes.

    .venv/bin/python bench/tp_gpu.py                # NCCL across every visible GPU
    .venv/bin/python bench/tp_gpu.py --device cpu   # the same checks with 2 gloo ranks

It drives `inference.llama.group.Group` the way the jobs worker does (rank 0 in this
process, followers started once and kept; `begin`/`end` around each batch, one decoder
kept between batches) on the demo's shape, untrained, written as one shard per rank:

1. same numbers: a schedule with a request joining a running batch, seeded sampling and
   a cancellation mid-batch, run twice on the group (the decoder kept between batches),
   against the same schedule in one process on GPU 0 with the shards merged: the tokens
   must be equal, the log-probabilities within 1e-3 (float32);
2. a rank killed with SIGKILL mid-batch (when there are 2 or more ranks), in a child
   process so that a rank 0 NCCL's watchdog ends is reported, not fatal to the script:
   how long rank 0 took to see it, what it said, and whether a new group then gives the
   same tokens;
3. memory: each GPU's free memory now, and for each LLaMA size how many such GPUs it
   needs in float16 and in int8 (weights + KV cache for 8 rows x 2048 tokens + logits),
   from `memory_plan`, the numbers the worker checks at start.

With one GPU the group is world size 1 (no followers, no NCCL) and check 2 is skipped.
Prints one JSON line per check and exits non-zero when one fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference.llama.checkpoint import load_model  # noqa: E402
from inference.llama.demo import build_demo_checkpoint  # noqa: E402
from inference.llama.generation import BatchDecoder, SamplingParams  # noqa: E402
from inference.llama.group import GB, Group, GroupSpec, memory_plan  # noqa: E402

PROMPTS = [[1, 5, 9, 200], [1, 17], [1, 99, 98, 97, 96, 95], [1, 42, 43]]
GREEDY = SamplingParams(max_new_tokens=24, ignore_eos=True, logprobs=True)
SAMPLED = SamplingParams(max_new_tokens=24, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True)
LLAMA = {
    "7B": ({"dim": 4096, "n_heads": 32, "n_layers": 32}, 1),
    "13B": ({"dim": 5120, "n_heads": 40, "n_layers": 40}, 2),
    "33B": ({"dim": 6656, "n_heads": 52, "n_layers": 60}, 4),
    "65B": ({"dim": 8192, "n_heads": 64, "n_layers": 80}, 8),
}


def stop_after_six(event) -> bool:
    return event.index < 5


def schedule(decoder: BatchDecoder) -> dict:
    """What a worker's batch does: requests arrive while others run, one is cancelled
    from its callback mid-batch, one is sampled with a seed."""
    done = {}
    decoder.add(PROMPTS[0], GREEDY, request_id="a")
    decoder.add(PROMPTS[1], SAMPLED, request_id="b")
    for _ in range(4):
        done.update({c.request_id: c for c in decoder.step()})
    decoder.add(PROMPTS[2], GREEDY, request_id="c", callback=stop_after_six)  # joins
    decoder.add(PROMPTS[3], SAMPLED, request_id="d")
    while decoder.has_work():
        done.update({c.request_id: c for c in decoder.step()})
    return {k: (c.tokens, c.logprobs, c.finish_reason) for k, c in done.items()}


def compare(reference: dict, got: dict) -> tuple[bool, float]:
    worst = 0.0
    for key, (tokens, logprobs, reason) in reference.items():
        g_tokens, g_logprobs, g_reason = got[key]
        if tokens != g_tokens or reason != g_reason:
            return False, float("inf")
        if logprobs is not None:
            worst = max(worst, max(abs(a - b) for a, b in zip(logprobs, g_logprobs, strict=True)))
    return worst < 1e-3, worst


def report(name: str, ok: bool, **figures) -> bool:
    print(json.dumps({"check": name, "ok": ok, **figures}), flush=True)
    return ok


def check_numbers(ckpt: Path, spec: GroupSpec, device: str) -> tuple[bool, dict]:
    ref_device = "cuda:0" if device == "cuda" else "cpu"
    model = load_model(ckpt, device=ref_device, dtype=torch.float32, max_seq_len=64)
    reference = schedule(BatchDecoder(model, None, max_batch_size=3, max_seq_len=64))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    assert reference["c"][2] == "cancelled" and len(reference["c"][0]) == 6
    started = time.monotonic()
    group = Group(spec)
    llama = group.start()
    start_s = time.monotonic() - started
    try:
        decoder = llama.decoder(max_batch_size=3, max_seq_len=64)
        results, step_s = [], []
        for _ in range(2):  # the decoder is kept between batches, as the worker keeps it
            t = time.monotonic()
            group.begin(decoder)
            results.append(schedule(decoder))
            group.end(decoder)
            step_s.append(time.monotonic() - t)
    finally:
        group.stop()
    oks = [compare(reference, r) for r in results]
    ok = report(
        "same tokens and logprobs as one process",
        all(ok for ok, _ in oks),
        ranks=spec.world_size,
        backend=spec.backend if spec.world_size > 1 else "none",
        max_logprob_diff=max(d for _, d in oks),
        group_start_s=round(start_s, 2),
        batch_s=[round(s, 2) for s in step_s],
    )
    return ok, {k: v[0] for k, v in reference.items()}


def kill_child(ckpt: str, spec_json: str) -> int:
    """In a child process: start a group, kill rank 1 mid-batch, see it, start again."""
    spec = GroupSpec(**json.loads(spec_json))
    group = Group(spec)
    llama = group.start()
    decoder = llama.decoder(max_batch_size=3, max_seq_len=64)
    group.begin(decoder)
    decoder.add(PROMPTS[0], SamplingParams(max_new_tokens=40, ignore_eos=True), request_id="x")
    decoder.step()
    decoder.step()
    os.kill(group.followers[0].pid, signal.SIGKILL)
    killed = time.monotonic()
    error = None
    try:
        while decoder.has_work():
            decoder.step()
    except Exception as exc:
        error = exc
    seen_s = time.monotonic() - killed
    reason = group.explain(error) if error else "no error: the batch went on without rank 1"
    group.abort(reason)
    group = Group(spec)
    llama = group.start()
    decoder = llama.decoder(max_batch_size=3, max_seq_len=64)
    group.begin(decoder)
    again = schedule(decoder)
    group.end(decoder)
    group.stop()
    print(
        json.dumps(
            {
                "error_seen": error is not None,
                "seen_after_s": round(seen_s, 3),
                "reason": reason,
                "restarted_tokens": {k: v[0] for k, v in again.items()},
            }
        ),
        flush=True,
    )
    return 0


def check_kill(ckpt: Path, spec: GroupSpec, expected_tokens: dict) -> bool:
    limit = 2 * spec.timeout_s + 120
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--kill-child", str(ckpt), json.dumps(spec.__dict__)],
            capture_output=True,
            text=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        return report("a rank killed mid-batch", False, error=f"hung for {limit:g}s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return report(
            "a rank killed mid-batch",
            False,
            rank0_exit=proc.returncode,
            stderr_tail=proc.stderr[-1500:],
        )
    out = json.loads(lines[-1])
    same = out.pop("restarted_tokens") == expected_tokens
    return report(
        "a rank killed mid-batch",
        out["error_seen"] and same and out["seen_after_s"] < spec.timeout_s + 5,
        restarted_group_same_tokens=same,
        total_s=round(time.monotonic() - started, 1),
        **out,
    )


def check_memory(device: str) -> bool:
    rows = []
    if device == "cuda":
        free, total = torch.cuda.mem_get_info(0)
        name = torch.cuda.get_device_name(0)
    else:
        free = total = 80 * 10**9
        name = "an 80 GB GPU (assumed: no CUDA here)"
    for size, (params, shards) in LLAMA.items():
        for quantize in (None, "int8"):
            need = None
            for ranks in (1, 2, 4, 8):
                if params["n_heads"] % ranks or (shards % ranks and ranks % shards):
                    continue
                plan = memory_plan(
                    {**params, "multiple_of": 256, "norm_eps": 1e-6, "vocab_size": -1},
                    world_size=ranks,
                    dtype=torch.float16,
                    quantize=quantize,
                    max_batch_size=8,
                    max_seq_len=2048,
                )
                if plan.per_rank + 0.5 * GB <= total:
                    need = (ranks, round((plan.per_rank + 0.5 * GB) / GB, 1))
                    break
            rows.append(
                {
                    "size": size,
                    "weights": quantize or "float16",
                    "gpus": need[0] if need else None,
                    "gb_per_gpu": need[1] if need else None,
                }
            )
    return report(
        "memory plan", True, gpu=name, free_gb=round(free / GB, 1), total_gb=round(total / GB, 1),
        sizes=rows,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--ranks", type=int, help="default: visible GPUs (max 8); 2 on the CPU")
    parser.add_argument("--timeout", type=float, default=30.0, help="collective timeout, s")
    parser.add_argument("--kill-child", nargs=2, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.kill_child:
        return kill_child(*ns.kill_child)
    device = ns.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    visible = min(torch.cuda.device_count(), 8) if device == "cuda" else 2
    ranks = ns.ranks or visible
    ranks = max(r for r in (1, 2, 4, 8) if r <= ranks)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "demo-tp"
        build_demo_checkpoint(ckpt, shards=ranks, steps=0, seed=1)
        spec = GroupSpec(
            ckpt_dir=str(ckpt), world_size=ranks, device=device, dtype="float32",
            max_seq_len=64, max_batch_size=3, timeout_s=ns.timeout, start_timeout_s=300,
        )  # fmt: skip
        ok, tokens = check_numbers(ckpt, spec, device)
        if ranks > 1:
            ok &= check_kill(ckpt, spec, tokens)
        else:
            report("a rank killed mid-batch", True, skipped="one rank: nothing to kill")
        ok &= check_memory(device)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
