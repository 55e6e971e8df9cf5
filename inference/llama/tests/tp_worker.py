"""What each tensor-parallel process runs in test_parallel (spawned: must be importable)."""

from __future__ import annotations

from pathlib import Path

import torch

from inference.llama.checkpoint import load_model
from inference.llama.generation import BatchDecoder, SamplingParams
from inference.llama.parallel import Parallel

TOKENS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(11))
PROMPTS = [[1, 5, 9, 200], [1, 17], [1, 99, 98, 97, 96, 95], [1, 42, 43]]
GREEDY = SamplingParams(max_new_tokens=10, ignore_eos=True)
SAMPLED = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=20, seed=7, ignore_eos=True)


def stop_after_four(event) -> bool:
    return event.index < 3


def drive(decoder: BatchDecoder) -> dict:
    """Rank 0's (or a single process's) schedule: requests arrive while others run, one
    cancels itself from its callback, one is sampled."""
    done = {}
    decoder.add(PROMPTS[0], GREEDY, request_id="a")
    decoder.add(PROMPTS[1], SAMPLED, request_id="b")
    for _ in range(3):
        done.update({c.request_id: c for c in decoder.step()})
    decoder.add(PROMPTS[2], GREEDY, request_id="c", callback=stop_after_four)
    decoder.add(PROMPTS[3], GREEDY, request_id="d")
    while decoder.has_work():
        done.update({c.request_id: c for c in decoder.step()})
    return {k: (c.tokens, c.finish_reason) for k, c in done.items()}


def run_rank(par: Parallel, ckpt_dir: str, out_dir: str) -> None:
    loaded: list[str] = []
    real_load = torch.load

    def spy(path, *args, **kwargs):
        loaded.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    torch.load = spy  # this process only
    model = load_model(ckpt_dir, max_seq_len=64, parallel=par)
    torch.load = real_load
    with torch.inference_mode():
        logits = model(TOKENS)
    decoder = BatchDecoder(model, None, max_batch_size=3, max_seq_len=32)
    if par.is_leader:
        results = drive(decoder)
        decoder.close()
    else:
        decoder.follow()
        results = None
    torch.save(
        {"logits": logits, "loaded": loaded, "results": results},
        Path(out_dir) / f"rank{par.rank}.pt",
    )
