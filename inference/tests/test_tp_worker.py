"""A real Celery worker serving a 2-shard checkpoint on 2 gloo ranks (issue 17).

One worker process runs the size alone (its two shards merged), another drives a
tensor-parallel group of two ranks; the same jobs must give the same tokens and
log-probabilities on both. A rank killed with SIGKILL mid-batch must hand every job of the
batch back, each finishing exactly once, and the group must start again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest
from django.test import override_settings

from catalog.models import ModelVariant
from inference.models import GenerationJob, JobState
from inference.services import job_cancel, job_submit
from inference.tests.conftest import wait_for_job
from portal.tests.workers import start_worker_process

pytestmark = [
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

SLUG = "demo-tp2"


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory):
    """The demo's shape, untrained (its text is noise; the numbers are what is compared),
    written as two model-parallel shards, as 13B is."""
    from inference.llama.demo import build_demo_checkpoint

    directory = tmp_path_factory.mktemp("tp-checkpoint") / SLUG
    build_demo_checkpoint(directory, shards=2, steps=0, seed=1)
    assert sorted(p.name for p in directory.glob("consolidated.*.pth")) == [
        "consolidated.00.pth",
        "consolidated.01.pth",
    ]
    return directory


@pytest.fixture
def variant(s3, two_shards, db, researcher):
    """A size of two shards, published to S3, which the researcher may run."""
    import json

    from accounts.tests.factories import grant_access
    from weights.services import variant_publish

    demo = ModelVariant.objects.get(slug="demo")
    variant = ModelVariant.objects.create(
        slug=SLUG,
        size="demo-TP",
        params=json.loads((two_shards / "params.json").read_text()),
        shard_count=2,
        context_length=demo.context_length,
        license=demo.license,
        access_policy=demo.access_policy,
        is_published=True,
        position=99,
    )
    variant_publish(variant=variant, directory=two_shards)
    grant_access(researcher, SLUG)
    return variant


def _start(tmp_path_factory, s3, django_db_blocker, **env):
    tmp = tmp_path_factory.mktemp("tp-worker")
    with django_db_blocker.unblock():
        return start_worker_process(
            log_dir=tmp,
            queues=[f"gpu.{SLUG}"],
            s3_server=s3,
            env={
                "JOBS_MODEL_CACHE_DIR": str(tmp / "models"),
                "JOBS_STEP_DELAY_SECONDS": "0.03",
                "JOBS_MAX_ATTEMPTS": "2",
                "JOBS_TORCH_THREADS": "1",
                "JOBS_TP_TIMEOUT_SECONDS": "8",
                **env,
            },
        )


@pytest.fixture(scope="module")
def worker_factory(s3, django_db_setup, django_db_blocker, tmp_path_factory):
    started = []

    def start(**env):
        worker = _start(tmp_path_factory, s3, django_db_blocker, **env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def tp_worker(worker_factory):
    """The tensor-parallel worker, started on first use (the single-process one must have
    the queue to itself while it runs)."""
    started = []

    def get():
        if not started:
            started.append(worker_factory(JOBS_TP_SIZES=f"{SLUG}:2"))
        return started[0]

    return get


def _submit(user, variant, prompt, **params):
    with override_settings(JOBS_MAX_ACTIVE_PER_USER=16):
        return job_submit(
            user=user,
            variant=variant,
            prompts=[prompt],
            params={"max_new_tokens": 8, "temperature": 0.0, **params},
        )


def _wait_running_with_tokens(job, timeout=90):
    from inference.events import events_read

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(event == "token" for _, event, _ in events_read(job.pk, block_ms=200)):
            job.refresh_from_db()
            return job
    raise AssertionError(f"job {job.pk} streamed no token")


def _scenario(user, variant, worker) -> dict:
    """Greedy with log-probabilities; seeded sampling joining it mid-batch; a job cancelled
    mid-batch; and a greedy job after the cancellation."""
    greedy = _submit(user, variant, "The model", max_new_tokens=40, logprobs=True, top_logprobs=2)
    _wait_running_with_tokens(greedy)
    sampled = _submit(
        user, variant, "A prompt", max_new_tokens=24, temperature=0.9, top_p=0.95, seed=5, n=2
    )
    doomed = _submit(user, variant, "Cancel me", max_new_tokens=200)
    _wait_running_with_tokens(doomed)
    job_cancel(job=doomed)
    later = _submit(user, variant, [1, 5, 9, 200, 31], max_new_tokens=16, logprobs=True)
    jobs = {"greedy": greedy, "sampled": sampled, "doomed": doomed, "later": later}
    for job in jobs.values():
        wait_for_job(job, timeout=120)
    # The sampled job joined the greedy one's running batch (one process, started before
    # the greedy one ended).
    assert sampled.worker_pid == greedy.worker_pid
    assert greedy.started_at < sampled.started_at < greedy.finished_at
    assert {job.worker for job in jobs.values()} == {worker.name}
    return jobs


def _tokens(job) -> list[list[int]]:
    return [o["token_ids"] for o in job.outputs]


def _assert_same(a, b):
    assert a.state == b.state == JobState.SUCCEEDED, (a.error, b.error)
    assert _tokens(a) == _tokens(b)
    for x, y in zip(a.outputs, b.outputs, strict=True):
        assert x["finish_reason"] == y["finish_reason"]
        if x["logprobs"] is None:
            assert y["logprobs"] is None
            continue
        assert x["logprobs"] == pytest.approx(y["logprobs"], abs=1e-4)
        tops = zip(x.get("top_logprobs") or [], y.get("top_logprobs") or [], strict=True)
        for top_x, top_y in tops:
            assert top_x == pytest.approx(top_y, abs=1e-4)


def _followers(worker) -> list[int]:
    """Pids of the follower ranks: children of the worker's pool process."""
    pids = []
    for child in worker.children():
        out = subprocess.run(
            ["pgrep", "-P", str(child)], capture_output=True, text=True, check=False
        ).stdout
        pids += [int(p) for p in out.split()]
    return pids


def test_two_gloo_ranks_give_the_tokens_and_logprobs_of_one_process(
    worker_factory, tp_worker, variant, researcher
):
    single = worker_factory()  # JOBS_TP_SIZES unset: one process, the shards merged
    try:
        alone = _scenario(researcher, variant, single)
        assert _followers(single) == []
    finally:
        single.stop()

    parallel = _scenario(researcher, variant, tp_worker())
    assert len(_followers(tp_worker())) == 1

    for name in ("greedy", "sampled", "later"):
        _assert_same(alone[name], parallel[name])
    assert len(parallel["sampled"].outputs) == 2
    assert _tokens(parallel["sampled"])[0] != _tokens(parallel["sampled"])[1]
    # Cancelled mid-batch on both: stopped early, and what it had is the same text so far.
    for run in (alone, parallel):
        job = run["doomed"]
        assert job.state == JobState.CANCELLED
        [output] = job.outputs
        assert output["finish_reason"] == "cancelled"
        assert 0 < len(output["token_ids"]) < 200
    a, b = _tokens(alone["doomed"])[0], _tokens(parallel["doomed"])[0]
    shorter = min(len(a), len(b))
    assert a[:shorter] == b[:shorter]


def test_a_rank_killed_mid_batch_hands_its_jobs_back_and_each_finishes_once(
    tp_worker, variant, researcher
):
    tp_worker = tp_worker()
    # Its presence says on how many ranks it serves the size.
    from core import workers

    assert workers.serving(f"gpu.{SLUG}") == [2]
    jobs = [_submit(researcher, variant, f"Prompt {i}", max_new_tokens=60) for i in range(3)]
    for job in jobs:
        _wait_running_with_tokens(job)
    [follower] = _followers(tp_worker)
    os.kill(follower, signal.SIGKILL)

    for job in jobs:
        wait_for_job(job, timeout=120)
    for job in jobs:
        assert job.state == JobState.SUCCEEDED, job.error
        assert job.attempts == 2
        [output] = job.outputs
        assert len(output["token_ids"]) == 60
        states = list(job.events.values_list("from_state", "to_state", "message"))
        assert [s[:2] for s in states] == [
            ("", "queued"),
            ("queued", "running"),
            ("running", "queued"),  # handed back once, with the reason
            ("queued", "running"),
            ("running", "succeeded"),
        ]
        assert "rank 1 of 2" in states[2][2] and "SIGKILL" in states[2][2]
    # The group started again: a new follower, and the worker says what happened.
    [new_follower] = _followers(tp_worker)
    assert new_follower != follower
    log = tp_worker.log()
    assert "rank 1 of 2" in log and "handed back" in log
    # Same greedy text as before the kill: the restarted group is the same model.
    again = _submit(researcher, variant, "Prompt 0", max_new_tokens=60)
    wait_for_job(again, timeout=60)
    assert _tokens(again) == _tokens(jobs[0])


def test_jobs_of_a_size_that_does_not_fit_fail_with_the_numbers(
    variant, researcher, settings, tmp_path
):
    """The memory check, in this process: a KV cache of a million rows cannot fit."""
    from inference import worker

    settings.JOBS_MODEL_CACHE_DIR = tmp_path
    settings.JOBS_MAX_BATCH_SIZE = 1_000_000
    settings.JOBS_TP_SIZES = {SLUG: 2}
    with pytest.raises(Exception) as info:
        worker.model_for(variant)
    message = str(info.value)
    assert type(info.value).__name__ == "DoesNotFit"
    assert "demo-TP does not fit" in message
    assert "2 ranks x" in message and "1000000 rows" in message
    assert "MemAvailable" in message
    assert worker.ranks_serving(SLUG) == 0
    assert GenerationJob.objects.count() == 0


def test_a_rank_that_hangs_is_cut_off_at_the_collective_timeout(tp_worker, variant, researcher):
    """A follower that stops answering (SIGSTOP) does not hang the batch: after
    JOBS_TP_TIMEOUT_SECONDS (8 s here) the job is handed back, the group is started again
    and the job runs to the end on it."""
    tp_worker = tp_worker()
    job = _submit(researcher, variant, "Hang on", max_new_tokens=60)
    _wait_running_with_tokens(job)
    [follower] = _followers(tp_worker)
    os.kill(follower, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for_job(job, timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(follower, signal.SIGCONT)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempts == 2
    took = time.monotonic() - stopped
    assert took > 8, took  # not before the timeout: a slow rank is not a dead one
    back = job.events.get(from_state="running", to_state="queued")
    assert "took longer than 8s" in back.message, back.message
    assert follower not in _followers(tp_worker)  # killed with the old group
