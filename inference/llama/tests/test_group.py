"""`group.Group`, the long-lived tensor-parallel group a server drives (no Django here):
what it says when a rank cannot start or dies while idle, and that a new group starts in
the same process after one was torn down."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from inference.llama.demo import build_demo_checkpoint
from inference.llama.generation import SamplingParams
from inference.llama.group import Group, GroupError, GroupSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory):
    directory = tmp_path_factory.mktemp("group") / "demo2"
    build_demo_checkpoint(directory, shards=2, steps=0, seed=2)
    return directory


def _spec(path, **kw) -> GroupSpec:
    return GroupSpec(
        ckpt_dir=str(path), world_size=2, dtype="float32", max_seq_len=64, threads=1,
        timeout_s=10, start_timeout_s=120, label="demo-2", **kw,
    )  # fmt: skip


def _greedy(llama, group) -> list[int]:
    decoder = llama.decoder(max_batch_size=2, max_seq_len=32)
    group.begin(decoder)
    decoder.add([1, 5, 9], SamplingParams(max_new_tokens=6, ignore_eos=True), request_id="a")
    out = []
    while decoder.has_work():
        out += [c.tokens for c in decoder.step()]
    group.end(decoder)
    return out[0]


def test_a_rank_that_cannot_load_is_named_with_its_error(two_shards, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in two_shards.iterdir():
        (broken / item.name).symlink_to(item)
    (broken / "consolidated.01.pth").unlink()
    (broken / "consolidated.01.pth").write_bytes(b"not a checkpoint")
    group = Group(_spec(broken))
    started = time.monotonic()
    with pytest.raises(GroupError) as info:
        group.start()
    message = str(info.value)
    assert message.startswith("demo-2: rank 1 could not start:"), message
    assert time.monotonic() - started < 60  # told at once, not after a timeout
    assert all(proc.poll() is not None for proc in group.followers)
    assert not torch.distributed.is_initialized()


def test_a_rank_dead_while_idle_is_seen_and_a_new_group_starts(two_shards):
    group = Group(_spec(two_shards))
    llama = group.start()
    try:
        first = _greedy(llama, group)
        assert group.lost() is None
        os.kill(group.followers[0].pid, signal.SIGKILL)
        group.followers[0].wait(timeout=10)
        reason = group.lost()
        assert reason.startswith("tensor-parallel rank 1 of 2 (pid ")
        assert reason.endswith("was killed by SIGKILL")
        with pytest.raises(GroupError, match="rank 1 of 2"):
            group.begin(llama.decoder(max_batch_size=2, max_seq_len=32))
    finally:
        group.abort("test")
    assert not torch.distributed.is_initialized()

    again = Group(_spec(two_shards))
    llama = again.start()
    try:
        assert _greedy(llama, again) == first
    finally:
        again.stop()
    assert [proc.poll() for proc in again.followers] == [0]  # told to exit, and did
