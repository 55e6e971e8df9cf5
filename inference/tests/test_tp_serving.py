"""How many tensor-parallel ranks serve a size (issue 17): the worker's plan (JOBS_TP_SIZES,
shards and visible GPUs), its presence keys, and what the model page, /v1/models and
/healthz say; and the memory check's arithmetic."""

from __future__ import annotations

import re
import uuid

import pytest
import torch
from django.core.exceptions import ImproperlyConfigured
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from catalog.models import ModelVariant
from catalog.selectors import Availability, variant_availability
from catalog.tests.factories import file_row
from core import workers
from core.env import env_ranks
from inference import worker
from inference.llama.group import DoesNotFit, GroupSpec, memory_check, memory_plan

LLAMA = {  # params.json of the four released sizes
    "7b": {"dim": 4096, "n_heads": 32, "n_layers": 32},
    "13b": {"dim": 5120, "n_heads": 40, "n_layers": 40},
    "33b": {"dim": 6656, "n_heads": 52, "n_layers": 60},
    "65b": {"dim": 8192, "n_heads": 64, "n_layers": 80},
}
SHARDS = {"7b": 1, "13b": 2, "33b": 4, "65b": 8}
COMMON = {"multiple_of": 256, "norm_eps": 1e-6, "vocab_size": -1}


# --- the plan ------------------------------------------------------------------------------


def test_the_setting_names_ranks_per_size(monkeypatch):
    monkeypatch.setenv("JOBS_TP_SIZES", " 33b:4, 65b:8 ")
    assert env_ranks("JOBS_TP_SIZES") == {"33b": 4, "65b": 8}
    monkeypatch.setenv("JOBS_TP_SIZES", "")
    assert env_ranks("JOBS_TP_SIZES") == {}
    for bad in ("65b", "65b:x", "65b:0", ":4"):
        monkeypatch.setenv("JOBS_TP_SIZES", bad)
        with pytest.raises(ImproperlyConfigured, match="33b:4,65b:8"):
            env_ranks("JOBS_TP_SIZES")


@pytest.mark.parametrize(
    ("device", "visible", "configured", "shards", "expected"),
    [
        ("auto", "", {}, 8, 1),  # no GPU: one CPU process
        ("cpu", "0,1,2,3", {}, 8, 1),  # told to use the CPU
        ("auto", "0,1,2,3,4,5,6,7", {}, 8, 8),  # 65B on eight GPUs
        ("auto", "0,1,2,3", {}, 8, 4),  # 65B on four: two shards per rank
        ("auto", "0,1,2", {}, 8, 2),  # three GPUs: a rank count that divides the shards
        ("auto", "0,1,2,3", {}, 1, 1),  # 7B has one shard
        ("auto", "", {"65b": 8}, 8, 8),  # the setting wins
        ("cpu", "", {"65b": 2}, 8, 2),  # gloo ranks on the CPU when asked for
    ],
)
def test_ranks_come_from_the_setting_or_the_shards_and_gpus(
    settings, monkeypatch, device, visible, configured, shards, expected
):
    settings.JOBS_DEVICE = device
    settings.JOBS_TP_SIZES = configured
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert worker.ranks_for("65b", shards) == expected


@given(gpus=st.integers(0, 16), shards=st.sampled_from([1, 2, 4, 8]))
@hsettings(max_examples=60, deadline=None)
def test_the_default_rank_count_always_splits_the_shards(gpus, shards):
    from django.test import override_settings

    visible = ",".join(str(i) for i in range(gpus))
    with (
        override_settings(JOBS_DEVICE="auto", JOBS_TP_SIZES={}),
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setenv("CUDA_VISIBLE_DEVICES", visible)
        ranks = worker.ranks_for("x", shards)
    assert 1 <= ranks <= max(1, min(gpus, shards))
    assert shards % ranks == 0


# --- memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "billions"), [("7b", 6.74), ("13b", 13.02), ("33b", 32.53), ("65b", 65.29)]
)
def test_the_weights_per_rank_add_up_to_the_size(size, billions):
    params = {**LLAMA[size], **COMMON}
    one = memory_plan(params, world_size=1, dtype=torch.float16, max_batch_size=1, max_seq_len=2048)
    assert one.weights_per_rank / 2e9 == pytest.approx(billions, abs=0.01)
    n = SHARDS[size]  # 33B's 52 heads split over 4 ranks, not 8
    split = memory_plan(
        params, world_size=n, dtype=torch.float16, max_batch_size=1, max_seq_len=2048
    )
    # Each rank holds its share, bar the replicated norms.
    assert split.weights_per_rank * n == pytest.approx(one.weights_per_rank, rel=1e-3)
    assert split.kv_cache_per_rank * n == one.kv_cache_per_rank
    int8 = memory_plan(
        params, world_size=1, dtype=torch.float16, quantize="int8", max_batch_size=1,
        max_seq_len=2048,
    )  # fmt: skip
    assert 0.5 < int8.weights_per_rank / one.weights_per_rank < 0.55


def test_the_kv_cache_is_two_tensors_per_layer_of_every_row_and_position():
    plan = memory_plan(
        {**LLAMA["7b"], **COMMON},
        world_size=1,
        dtype=torch.float16,
        max_batch_size=8,
        max_seq_len=2048,
    )
    assert plan.kv_cache_per_rank == 2 * 32 * 8 * 2048 * 4096 * 2  # 8.6 GB


def test_a_size_that_does_not_fit_is_refused_with_the_numbers():
    spec = GroupSpec(
        ckpt_dir="/ckpt/65B", world_size=4, device="cuda", dtype="float16",
        max_seq_len=2048, max_batch_size=8, label="LLaMA 65B",
    )  # fmt: skip
    params = {**LLAMA["65b"], **COMMON}
    with pytest.raises(DoesNotFit) as info:
        memory_check(spec, params, available=(int(20e9), "cuda:0 (A100 40GB)"))
    message = str(info.value)
    # 130.6 GB of float16 weights over 4 ranks; K and V of 80 layers x 16 heads x 128 for
    # 8 x 2048 positions; 8192 tokens' float32 logits over 32000 pieces, twice; 0.5 GB of
    # CUDA context.
    weights, kv = 65.29e9 * 2 / 4, 2 * 80 * 8 * 2048 * (16 * 128) * 2
    logits = 2 * 8192 * 32000 * 4 + 0.5e9
    found = re.search(
        r"fit: ([\d.]+) GB per rank \(([\d.]+) GB of weights in float16 on 4 rank\(s\) \+ "
        r"([\d.]+) GB of KV cache for 8 rows x 2048 tokens \+ ([\d.]+) GB of logits and "
        r"CUDA context\) = ([\d.]+) GB needed",
        message,
    )
    assert found, message
    total, w, k, a, needed = (float(x) for x in found.groups())
    assert w == pytest.approx(weights / 1e9, abs=0.02)
    assert k == pytest.approx(kv / 1e9, abs=0.01)
    assert a == pytest.approx(logits / 1e9, abs=0.01)
    assert total == needed == pytest.approx(w + k + a, abs=0.02)
    assert "cuda:0 (A100 40GB) has 20.00 GB free" in message
    assert "JOBS_TP_SIZES" in message
    # Eight ranks of 80 GB fit.
    memory_check(
        GroupSpec(**{**spec.__dict__, "world_size": 8}), params, available=(int(80e9), "gpu")
    )


def test_on_the_cpu_every_rank_counts_against_the_host():
    spec = GroupSpec(ckpt_dir="/ckpt/13B", world_size=2, device="cpu", dtype="bfloat16")
    params = {**LLAMA["13b"], **COMMON}
    with pytest.raises(DoesNotFit, match=r"2 ranks x 21\.8\d GB per rank .* = 43\.6\d GB") as info:
        memory_check(spec, params, available=(int(40e9), "this host's RAM (MemAvailable)"))
    assert "more CPU ranks share the same RAM" in str(info.value)
    memory_check(spec, params, available=(int(45e9), "this host's RAM (MemAvailable)"))


# --- what is told ----------------------------------------------------------------------------


@pytest.fixture
def queue_keys(settings):
    settings.WORKER_PRESENCE_SECONDS = 3600  # the keys outlive a slow run
    announced = []

    def announce(node, queues, ranks=None):
        workers.announce(node=node, queues=queues, ranks=ranks)
        announced.append((node, queues))

    yield announce
    for node, queues in announced:
        workers.withdraw(node=node, queues=queues)


def test_presence_carries_each_workers_rank_count(queue_keys):
    queue = f"gpu.test-{uuid.uuid4().hex[:8]}"
    assert workers.serving(queue) == []
    queue_keys("a@host", [queue, "default"], {queue: 8})
    queue_keys("b@host", [queue])
    assert workers.serving(queue) == [8, 1]
    assert workers.consumers(queue) == 2
    served = workers.served()
    assert served[queue] == [8, 1]
    assert 1 in served["default"]


@given(ranks=st.lists(st.integers(1, 8), max_size=4))
def test_served_by_says_workers_and_ranks(ranks):
    a = Availability(
        size="65B", queue="gpu.65b", files=True, workers=len(ranks), ranks=tuple(ranks)
    )
    text = a.served_by
    if not ranks:
        assert text == "" and not a.runnable
        return
    assert text.startswith(f"{len(ranks)} worker")
    assert ("tensor-parallel" in text) == (max(ranks) > 1)
    if max(ranks) > 1:
        assert str(max(ranks)) in text


@pytest.mark.django_db
def test_the_model_page_v1_models_and_healthz_tell_the_ranks(
    queue_keys, api_client, generate_token, researcher, client
):
    from portal.health import _served_sizes

    file_row("7b")
    queue_keys("big@host", ["gpu.7b"], {"gpu.7b": 2})
    seven = ModelVariant.objects.get(slug="7b")
    assert variant_availability(seven).served_by == "1 worker, 2 tensor-parallel ranks"

    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {generate_token}")
    model = api_client.get("/v1/models/7b").json()
    assert model["ready"] is True
    assert (model["workers"], model["tensor_parallel_ranks"]) == (1, 2)

    client.force_login(researcher)
    page = client.get(seven.get_absolute_url())
    assert page.status_code == 200
    assert "served by 1 worker, 2 tensor-parallel ranks" in page.content.decode()

    assert "gpu.7b (1 worker x 2 ranks)" in _served_sizes()


# --- deployment ------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "gpus"), [("33b", 4), ("65b", 8)])
def test_compose_has_a_tensor_parallel_worker_per_large_size(size, gpus):
    """Each large size has its own worker: as many GPUs reserved as ranks configured, a
    rank count that splits the shards and the heads, one pool process, its own queue,
    and float16 with a batch of 8 fitting 40 GB cards (the README's table)."""
    from pathlib import Path

    import yaml

    compose = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text()
    )
    service = compose["services"][f"worker-{size}"]
    env = service["environment"]
    ranks = dict(item.split(":") for item in env["JOBS_TP_SIZES"].split(","))
    assert int(ranks[size]) == gpus
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert (device["count"], device["capabilities"]) == (gpus, ["gpu"])
    command = service["command"]
    assert command[command.index("-Q") + 1] == f"gpu.{size}"
    assert command[command.index("-c") + 1] == "1"
    assert service["shm_size"]
    assert (env["JOBS_DEVICE"], env["JOBS_DTYPE"]) == ("cuda", "float16")
    spec = GroupSpec(
        ckpt_dir="/", world_size=gpus, device="cuda", dtype="float16",
        max_seq_len=2048, max_batch_size=8, label=size,
    )  # fmt: skip
    assert SHARDS[size] % gpus == 0 and LLAMA[size]["n_heads"] % gpus == 0
    memory_check(spec, {**LLAMA[size], **COMMON}, available=(int(40e9), "a 40 GB GPU"))
    with pytest.raises(DoesNotFit):
        memory_check(spec, {**LLAMA[size], **COMMON}, available=(int(20e9), "a 20 GB GPU"))


@given(gaps=st.lists(st.floats(0, 1000), min_size=1, max_size=12))
def test_the_worker_stops_restarting_a_group_lost_three_times_in_ten_minutes(gaps):
    """Over any sequence of losses: it gives up exactly when this loss and at least two
    others fall within the last 600 s."""
    slug = f"size-{uuid.uuid4().hex[:8]}"
    now, times = 0.0, []
    for gap in gaps:
        now += gap
        times.append(now)
        recent = [t for t in times if now - t < worker.TP_LOSS_WINDOW_SECONDS]
        assert worker.group_lost_too_often(slug, now=now) == (len(recent) >= 3)
    worker._losses.pop(slug, None)


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0, 100, 200], [False, False, True]),  # three in ten minutes: stop
        ([0, 400, 800, 1200], [False, False, False, False]),  # never three in a window
        ([0, 599, 1198], [False, False, False]),  # the first lapsed at 599 s later
        ([0, 10, 700, 710, 720], [False, False, False, False, True]),
    ],
)
def test_examples_of_when_the_worker_stops_restarting(times, expected):
    slug = f"size-{uuid.uuid4().hex[:8]}"
    assert [worker.group_lost_too_often(slug, now=t) for t in times] == expected
    worker._losses.pop(slug, None)
