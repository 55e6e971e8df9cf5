from __future__ import annotations

import pytest
import torch

from inference.llama.checkpoint import load_model
from inference.llama.generation import BatchDecoder
from inference.llama.parallel import spawn

from . import tp_worker
from .conftest import write_random_checkpoint


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory):
    path = tmp_path_factory.mktemp("tp4")
    write_random_checkpoint(path, shards=4, seed=21)
    return path


def single_process(ckpt_dir):
    model = load_model(ckpt_dir, max_seq_len=64)
    with torch.inference_mode():
        logits = model(tp_worker.TOKENS)
    decoder = BatchDecoder(model, None, max_batch_size=3, max_seq_len=32)
    return logits, tp_worker.drive(decoder)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("world_size", "expected_loads"),
    [
        # 4 ranks, 4 shards: each rank reads its own shard
        (4, [["consolidated.00.pth"], ["consolidated.01.pth"],
             ["consolidated.02.pth"], ["consolidated.03.pth"]]),
        # 2 ranks, 4 shards (65B's 8 shards on 4 GPUs, say): each merges two of them
        (2, [["consolidated.00.pth", "consolidated.01.pth"],
             ["consolidated.02.pth", "consolidated.03.pth"]]),
    ],
)  # fmt: skip
def test_tensor_parallel_ranks_match_the_merged_model(
    four_shards, tmp_path, world_size, expected_loads
):
    ckpt_dir = four_shards
    spawn(tp_worker.run_rank, world_size, str(ckpt_dir), str(tmp_path), backend="gloo")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
    assert [r["loaded"] for r in ranks] == expected_loads

    logits, results = single_process(ckpt_dir)
    for r in ranks:
        torch.testing.assert_close(r["logits"], logits, atol=1e-5, rtol=0)
    # Same tokens for greedy and seeded sampling, same cancellation, with requests
    # joining mid-way: rank 0 drove, the others followed without drifting.
    assert ranks[0]["results"] == results
    assert results["c"] == (results["c"][0][:4], "cancelled")
    assert len(results["c"][0]) == 4
