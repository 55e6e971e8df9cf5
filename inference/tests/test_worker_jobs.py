"""Jobs through a real Celery worker process, real Redis, PostgreSQL and S3."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta

import pytest

from accounts.services import grant_revoke
from accounts.tests.factories import ReviewerFactory
from inference.models import GenerationJob, JobState
from inference.services import job_submit
from inference.tests.conftest import wait_for_job

pytestmark = [
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


def _submit(user, variant, prompt="The model", **params):
    return job_submit(
        user=user,
        variant=variant,
        prompts=[prompt],
        params={"max_new_tokens": 8, "temperature": 0.0, **params},
    )


def _sse_events(response) -> list[tuple[str, dict]]:
    events, event = [], None
    for raw in b"".join(response.streaming_content).decode().splitlines():
        if raw.startswith("event: "):
            event = raw[7:]
        elif raw.startswith("data: "):
            events.append((event, json.loads(raw[6:])))
    return events


def _wait_for_tokens(job, timeout: float = 60) -> None:
    from inference.events import events_read

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(event == "token" for _, event, _ in events_read(job.pk, block_ms=200)):
            return
    raise AssertionError("no token was streamed")


def test_a_job_goes_through_the_queue_and_back(
    jobs_worker, published_demo, researcher, api_client, generate_token
):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {generate_token}")
    response = api_client.post(
        "/api/v1/jobs",
        {"model": "demo", "prompt": "The model", "max_new_tokens": 12, "logprobs": True},
        format="json",
    )
    assert response.status_code == 201, response.json()
    job_id = response.json()["id"]

    stream = api_client.get(f"/api/v1/jobs/{job_id}/stream", HTTP_ACCEPT="text/event-stream")
    events = _sse_events(stream)

    job = GenerationJob.objects.get(pk=job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempts == 1
    assert job.worker == jobs_worker.name
    [output] = job.outputs
    assert output["finish_reason"] in ("length", "eos")
    assert 1 <= len(output["token_ids"]) <= 12
    assert len(output["logprobs"]) == len(output["token_ids"])
    assert all(lp <= 0 for lp in output["logprobs"])
    assert job.completion_tokens == len(output["token_ids"])
    assert job.prompt_tokens > 1
    assert job.token_charge == job.prompt_tokens + job.completion_tokens
    assert job.queue_wait is not None and job.queue_wait >= 0
    assert job.time_to_first_token >= job.queue_wait
    assert job.decode_tokens_per_second > 0
    # The stream carried the same text, token by token, then the finished job.
    tokens = [data for event, data in events if event == "token"]
    assert "".join(t["text"] for t in tokens) == output["text"]
    assert events[-1][0] == "end"
    assert events[-1][1]["state"] == "succeeded"
    assert events[-1][1]["outputs"][0]["text"] == output["text"]


def test_a_job_with_several_prompts_and_choices_is_recorded_in_order(
    jobs_worker, published_demo, researcher
):
    job = job_submit(
        user=researcher,
        variant=published_demo,
        prompts=["The model", "A question"],
        params={"max_new_tokens": 6, "n": 2, "temperature": 0.9, "seed": 7},
    )
    wait_for_job(job)

    assert job.state == JobState.SUCCEEDED, job.error
    assert [(o["index"], o["prompt_index"]) for o in job.outputs] == [
        (0, 0), (1, 0), (2, 1), (3, 1),
    ]  # fmt: skip
    # The same seed gives the same text again, whatever shares the batch.
    again = job_submit(
        user=researcher,
        variant=published_demo,
        prompts=["The model", "A question"],
        params={"max_new_tokens": 6, "n": 2, "temperature": 0.9, "seed": 7},
    )
    wait_for_job(again)
    assert [o["text"] for o in again.outputs] == [o["text"] for o in job.outputs]


def test_queued_jobs_of_one_size_are_decoded_together(jobs_worker, published_demo, researcher):
    from django.test import override_settings

    with override_settings(JOBS_MAX_ACTIVE_PER_USER=8):
        jobs = [_submit(researcher, published_demo, max_new_tokens=20) for _ in range(4)]
    for job in jobs:
        wait_for_job(job)

    assert all(j.state == JobState.SUCCEEDED for j in jobs)
    # One worker process ran them, and each started before the first one finished.
    assert len({(j.worker_host, j.worker_pid) for j in jobs}) == 1
    first_end = min(j.finished_at for j in jobs)
    assert all(j.started_at < first_end for j in jobs)


def test_the_owner_cancels_a_running_job_and_it_stops_within_a_few_tokens(
    jobs_worker, published_demo, researcher, api_client, generate_token
):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {generate_token}")
    job = _submit(researcher, published_demo, max_new_tokens=200)
    _wait_for_tokens(job)

    response = api_client.post(f"/api/v1/jobs/{job.pk}/cancel")
    asked = time.monotonic()
    assert response.status_code == 202
    wait_for_job(job, timeout=10)
    took = time.monotonic() - asked

    assert job.state == JobState.CANCELLED
    assert job.error == "Cancelled by its owner."
    [output] = job.outputs
    assert output["finish_reason"] == "cancelled"
    assert 0 < len(output["token_ids"]) < 200
    assert took < 5, took  # generous for a loaded machine; typically a few steps


def test_killing_the_worker_process_mid_job_still_gives_exactly_one_result(
    jobs_worker, published_demo, researcher
):
    job = _submit(researcher, published_demo, max_new_tokens=60)
    _wait_for_tokens(job)
    job.refresh_from_db()
    assert job.state == JobState.RUNNING
    assert job.worker_pid in jobs_worker.children()

    os.kill(job.worker_pid, signal.SIGKILL)
    wait_for_job(job, timeout=90)

    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempts == 2
    assert len(job.outputs) == 1
    assert job.outputs[0]["finish_reason"] in ("length", "eos")
    states = list(job.events.values_list("from_state", "to_state"))
    assert states == [
        ("", "queued"),
        ("queued", "running"),
        ("running", "queued"),  # taken back from the dead process
        ("queued", "running"),
        ("running", "succeeded"),
    ]


def test_the_batch_of_a_killed_worker_process_runs_again_as_one_batch(
    jobs_worker, published_demo, researcher
):
    """kill -9 a process running a batch of 4: the next one takes the whole batch back
    at its first message and claims the 4 together (their second runs overlap in one
    process), each ending once with one result."""
    from django.test import override_settings

    with override_settings(JOBS_MAX_ACTIVE_PER_USER=8):
        jobs = [
            _submit(researcher, published_demo, prompt=f"The model {i}", max_new_tokens=60)
            for i in range(4)
        ]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        rows = list(GenerationJob.objects.filter(pk__in=[j.pk for j in jobs]))
        pids = {r.worker_pid for r in rows}
        if all(r.state == JobState.RUNNING for r in rows) and len(pids) == 1:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the 4 jobs never ran together")
    [killed] = pids
    assert killed in jobs_worker.children()
    os.kill(killed, signal.SIGKILL)
    for job in jobs:
        wait_for_job(job, timeout=90)

    assert all(j.state == JobState.SUCCEEDED for j in jobs), [j.error for j in jobs]
    assert all(j.attempts == 2 and len(j.outputs) == 1 for j in jobs)
    assert len({j.worker_pid for j in jobs}) == 1 and jobs[0].worker_pid != killed
    first_end = min(j.finished_at for j in jobs)
    assert all(j.started_at < first_end for j in jobs)  # one batch, not one at a time
    for job in jobs:
        states = list(job.events.values_list("from_state", "to_state"))
        assert states.count(("running", "queued")) == 1
        assert states[-1] == ("running", "succeeded")
        assert states.count(("running", "succeeded")) == 1


def test_a_job_that_keeps_killing_its_worker_fails_with_a_message(
    jobs_worker, published_demo, researcher
):
    job = _submit(researcher, published_demo, max_new_tokens=150)
    for attempt in (1, 2):  # JOBS_MAX_ATTEMPTS is 2 for this worker
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            job.refresh_from_db()
            alive = job.worker_pid in jobs_worker.children()
            if job.state == JobState.RUNNING and job.attempts == attempt and alive:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(job.worker_pid, signal.SIGKILL)

    wait_for_job(job, states=("failed",), timeout=90)
    assert job.attempts == 2
    assert "stopped 2 time(s)" in job.error
    assert "memory" in job.error
    assert job.outputs == []


def test_a_revoked_users_queued_job_is_cancelled_and_never_run(
    jobs_worker, published_demo, researcher
):
    # The worker is busy with a long job that fills its whole batch (8 sequences), so the
    # next one waits in the queue instead of joining the batch.
    blocker = _submit(researcher, published_demo, max_new_tokens=150, n=8)
    wait_for_job(blocker, states=("running",))
    from accounts.tests.factories import UserFactory, grant_access

    other = UserFactory()
    (grant,) = grant_access(other, "demo")
    queued = _submit(other, published_demo)
    assert GenerationJob.objects.get(pk=queued.pk).state == JobState.QUEUED

    grant_revoke(grant=grant, actor=ReviewerFactory(), reason="Shared the weights.")

    queued.refresh_from_db()
    assert queued.state == JobState.CANCELLED
    assert "revoked" in queued.error
    wait_for_job(blocker)
    time.sleep(0.5)
    queued.refresh_from_db()
    assert queued.state == JobState.CANCELLED
    assert queued.attempts == 0 and queued.outputs == []


def test_the_worker_checks_access_again_at_start(jobs_worker, published_demo, researcher):
    from accounts.models import Grant

    blocker = _submit(researcher, published_demo, max_new_tokens=100, n=8)  # a full batch
    wait_for_job(blocker, states=("running",))
    from accounts.tests.factories import UserFactory, grant_access

    other = UserFactory()
    grant_access(other, "demo")
    queued = _submit(other, published_demo)
    # The grant runs out while the job waits (no revocation signal is sent for this).
    Grant.objects.filter(user=other).update(
        starts_at=queued.created_at - timedelta(days=2),
        ends_at=queued.created_at - timedelta(days=1),
    )

    wait_for_job(queued)

    assert queued.state == JobState.CANCELLED
    assert queued.error.startswith("Not run: Your access to LLaMA demo expired")
    assert queued.outputs == []


def test_a_job_past_the_soft_time_limit_fails_cleanly(jobs_worker, published_demo, researcher):
    from django.test import override_settings

    with override_settings(JOBS_SOFT_TIME_LIMIT=1, JOBS_TIME_LIMIT=30):
        job = _submit(researcher, published_demo, max_new_tokens=200)
    wait_for_job(job, timeout=60)

    assert job.state == JobState.FAILED
    assert job.error == (
        "The job ran past the time limit of 1 seconds and was stopped. Ask for fewer new tokens."
    )
    assert job.attempts == 1


def test_a_job_whose_queue_message_was_lost_runs_after_the_sweep(
    jobs_worker, published_demo, researcher, monkeypatch
):
    from django.test import override_settings
    from django.utils import timezone

    from inference import tasks
    from inference.services import jobs_sweep_stuck

    with monkeypatch.context() as m:
        m.setattr(tasks.run_generation, "apply_async", lambda **kwargs: None)  # Redis lost it
        job = _submit(researcher, published_demo)
    time.sleep(1)
    assert GenerationJob.objects.get(pk=job.pk).state == JobState.QUEUED

    with override_settings(JOBS_RESEND_SECONDS=60):
        result = jobs_sweep_stuck(now=timezone.now() + timedelta(minutes=2))
    wait_for_job(job)

    assert result.resent == 1
    assert job.state == JobState.SUCCEEDED and job.attempts == 1
