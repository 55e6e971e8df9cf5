"""Services of the jobs app without a worker process: claims, results, take-back, the sweep,
revocation. The worker's own loop is exercised in test_worker_jobs.py."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from accounts.services import grant_revoke
from accounts.tests.factories import ReviewerFactory
from catalog.models import ModelVariant
from core.errors import Conflict
from inference.models import TRANSITIONS, GenerationJob, JobState
from inference.services import (
    InvalidTransition,
    WorkerIdentity,
    job_cancel,
    job_claim,
    job_finish,
    job_submit,
    job_take_back,
    jobs_claim_queued,
    jobs_heartbeat,
    jobs_sweep_stuck,
    jobs_take_back_batch,
)

WORKER = WorkerIdentity(node="w1@host", host="elsewhere.example", pid=12345)
OTHER = WorkerIdentity(node="w2@host", host="elsewhere.example", pid=23456)


@pytest.fixture
def demo(db) -> ModelVariant:
    return ModelVariant.objects.get(slug="demo")


@pytest.fixture
def job(researcher, demo) -> GenerationJob:
    return job_submit(
        user=researcher, variant=demo, prompts=["Hello"], params={"max_new_tokens": 4}
    )


def test_the_transition_table_has_no_way_out_of_a_final_state():
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        assert TRANSITIONS[state] == frozenset()
    assert set(TRANSITIONS) == set(JobState.values)


def test_only_one_claim_of_a_queued_job_succeeds(job):
    first = job_claim(job_id=job.pk, worker=WORKER)
    second = job_claim(job_id=job.pk, worker=OTHER)

    assert first is not None and second is None
    assert first.state == JobState.RUNNING and first.attempts == 1
    assert first.worker == "w1@host" and first.worker_pid == 12345
    assert first.claim_id is not None


def test_a_cancelled_job_cannot_be_claimed(job):
    job_cancel(job=job)
    assert job_claim(job_id=job.pk, worker=WORKER) is None


def test_the_result_is_written_once_and_only_by_the_claim_that_ran_it(job):
    claimed = job_claim(job_id=job.pk, worker=WORKER)
    assert job_take_back(job_id=job.pk, claim_id=claimed.claim_id, reason="test") == "queued"
    rerun = job_claim(job_id=job.pk, worker=OTHER)

    # The first process wakes up and reports: refused, the rerun owns the job now.
    assert not job_finish(job=claimed, state=JobState.SUCCEEDED, outputs=[{"text": "old"}])
    assert job_finish(job=rerun, state=JobState.SUCCEEDED, outputs=[{"text": "new"}])
    assert not job_finish(job=rerun, state=JobState.FAILED, error="twice")

    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED
    assert job.outputs == [{"text": "new"}]
    assert job.attempts == 2
    with pytest.raises(InvalidTransition):
        job_finish(job=rerun, state=JobState.QUEUED)


def test_take_back_fails_the_job_after_the_attempt_cap(job):
    claimed = job_claim(job_id=job.pk, worker=WORKER)
    with override_settings(JOBS_MAX_ATTEMPTS=1):
        state = job_take_back(job_id=job.pk, claim_id=claimed.claim_id, reason="it died")

    job.refresh_from_db()
    assert state == job.state == JobState.FAILED
    assert "stopped 1 time(s) (it died)" in job.error
    assert job.token_charge == job.prompt_tokens


def test_take_back_of_a_job_whose_owner_asked_to_cancel_cancels_it(job):
    claimed = job_claim(job_id=job.pk, worker=WORKER)
    job_cancel(job=claimed)

    assert job_take_back(job_id=job.pk, claim_id=claimed.claim_id, reason="x") == "cancelled"


def test_cancelling_a_running_job_sets_the_flag_the_heartbeat_reports(job):
    claimed = job_claim(job_id=job.pk, worker=WORKER)

    returned = job_cancel(job=claimed)

    assert returned.state == JobState.RUNNING and returned.cancel_requested
    assert jobs_heartbeat(claims={claimed.pk: claimed.claim_id}) == {claimed.pk}
    # A stale claim (the job was taken back meanwhile) is not told to stop someone else's run.
    assert jobs_heartbeat(claims={claimed.pk: uuid.uuid4()}) == set()
    assert job_finish(job=claimed, state=JobState.CANCELLED, error="Cancelled by its owner.")
    with pytest.raises(Conflict):
        job_cancel(job=claimed)


def test_batch_claims_take_the_oldest_queued_jobs_of_that_size(researcher, demo):
    with override_settings(JOBS_MAX_ACTIVE_PER_USER=10):
        jobs = [
            job_submit(user=researcher, variant=demo, prompts=[f"p{i}"], params={})
            for i in range(4)
        ]
    seven = ModelVariant.objects.get(slug="7b")
    with override_settings(JOBS_MAX_ACTIVE_PER_USER=10):
        other_size = job_submit(user=researcher, variant=seven, prompts=["x"], params={})

    claimed = jobs_claim_queued(variant=demo, worker=WORKER, limit=3)

    assert [j.pk for j in claimed] == [j.pk for j in jobs[:3]]
    assert GenerationJob.objects.get(pk=other_size.pk).state == JobState.QUEUED


def test_revoking_a_grant_cancels_queued_and_stops_running_jobs_of_that_size(
    researcher, demo, django_capture_on_commit_callbacks
):
    with override_settings(JOBS_MAX_ACTIVE_PER_USER=10):
        queued = job_submit(user=researcher, variant=demo, prompts=["a"], params={})
        running = job_submit(user=researcher, variant=demo, prompts=["b"], params={})
        seven = job_submit(
            user=researcher, variant=ModelVariant.objects.get(slug="7b"), prompts=["c"], params={}
        )
    job_claim(job_id=running.pk, worker=WORKER)
    grant = researcher.grants.get(variant=demo, status="active")

    with django_capture_on_commit_callbacks(execute=True):
        grant_revoke(grant=grant, actor=ReviewerFactory(), reason="Broke the license.")

    queued.refresh_from_db()
    running.refresh_from_db()
    seven.refresh_from_db()
    assert queued.state == JobState.CANCELLED and "revoked" in queued.error
    assert running.state == JobState.RUNNING and running.cancel_requested
    assert seven.state == JobState.QUEUED


def test_the_sweep_takes_back_jobs_whose_heartbeat_stopped(job, monkeypatch):
    sent = []
    monkeypatch.setattr(
        "inference.tasks.run_generation.apply_async", lambda **kw: sent.append(kw["args"])
    )
    claimed = job_claim(job_id=job.pk, worker=WORKER)
    GenerationJob.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(minutes=5)
    )

    with override_settings(JOBS_STALE_SECONDS=60):
        result = jobs_sweep_stuck()

    job.refresh_from_db()
    assert result.requeued == 1
    assert job.state == JobState.QUEUED and job.claim_id is None
    assert claimed.claim_id is not None
    # A fresh heartbeat is left alone.
    rerun = job_claim(job_id=job.pk, worker=OTHER)
    assert jobs_sweep_stuck().requeued == 0
    assert GenerationJob.objects.get(pk=rerun.pk).state == JobState.RUNNING


def test_the_sweep_resends_old_queue_messages_and_expires_jobs_nobody_ran(
    researcher, demo, django_capture_on_commit_callbacks, monkeypatch
):
    sent = []
    monkeypatch.setattr(
        "inference.tasks.run_generation.apply_async", lambda **kw: sent.append(kw["args"][0])
    )
    now = timezone.now()
    with override_settings(JOBS_MAX_ACTIVE_PER_USER=10):
        waiting = job_submit(user=researcher, variant=demo, prompts=["a"], params={})
        ancient = job_submit(user=researcher, variant=demo, prompts=["b"], params={})
    GenerationJob.objects.filter(pk=waiting.pk).update(queued_at=now - timedelta(minutes=10))
    GenerationJob.objects.filter(pk=ancient.pk).update(
        created_at=now - timedelta(hours=7), queued_at=now - timedelta(hours=7)
    )

    with (
        override_settings(JOBS_RESEND_SECONDS=300, JOBS_QUEUED_EXPIRE_SECONDS=6 * 3600),
        django_capture_on_commit_callbacks(execute=True),
    ):
        result = jobs_sweep_stuck(now=now)

    assert (result.resent, result.expired) == (1, 1)
    assert sent == [str(waiting.pk)]
    ancient.refresh_from_db()
    assert ancient.state == JobState.FAILED
    assert "No worker serving LLaMA demo" in ancient.error
    assert ancient.token_charge == 0


def test_a_redis_outage_at_submission_leaves_the_job_queued_for_the_sweep(
    researcher, demo, django_capture_on_commit_callbacks, monkeypatch
):
    def broker_down(**kwargs):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr("inference.tasks.run_generation.apply_async", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        job = job_submit(user=researcher, variant=demo, prompts=["a"], params={})

    assert GenerationJob.objects.get(pk=job.pk).state == JobState.QUEUED


def test_the_task_body_is_a_no_op_for_a_job_another_live_process_runs(job):
    from inference.worker import job_run

    GenerationJob.objects.filter(pk=job.pk).update(
        state=JobState.RUNNING,
        claim_id=uuid.uuid4(),
        worker_host=__import__("socket").gethostname(),
        worker_pid=os.getppid(),  # alive, and not this process
        heartbeat_at=timezone.now(),
    )

    assert job_run(str(job.pk), node="test") == "running in another process"
    assert job_run(str(uuid.uuid4()), node="test") == "no such job"
    GenerationJob.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED)
    assert job_run(str(job.pk), node="test") == "already succeeded"


def test_a_message_the_broker_never_took_goes_out_at_the_next_sweep(
    researcher, demo, django_capture_on_commit_callbacks, monkeypatch
):
    """Recovery in seconds: not after JOBS_RESEND_SECONDS, at the first sweep once Redis
    answers again (beat runs the sweep every JOBS_SWEEP_SECONDS)."""
    sent: list[str] = []

    def broker_down(**kwargs):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr("inference.tasks.run_generation.apply_async", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        lost = job_submit(user=researcher, variant=demo, prompts=["a"], params={})
    assert GenerationJob.objects.get(pk=lost.pk).message_sent is False

    monkeypatch.setattr(
        "inference.tasks.run_generation.apply_async", lambda **kw: sent.append(kw["args"][0])
    )
    with (
        override_settings(JOBS_MAX_ACTIVE_PER_USER=10),
        django_capture_on_commit_callbacks(execute=True),
    ):
        taken = job_submit(user=researcher, variant=demo, prompts=["b"], params={})
    assert GenerationJob.objects.get(pk=taken.pk).message_sent is True
    with (
        override_settings(JOBS_RESEND_SECONDS=300),
        django_capture_on_commit_callbacks(execute=True),
    ):
        result = jobs_sweep_stuck(now=timezone.now() + timedelta(seconds=3))

    assert result.resent == 1
    assert sent == [str(taken.pk), str(lost.pk)]  # the one sent at submission is left alone
    assert GenerationJob.objects.get(pk=lost.pk).message_sent is True
    assert settings.JOBS_SWEEP_SECONDS <= 15


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _hold(jobs, *, host: str, pid: int, heartbeat_age: float) -> None:
    """Mark `jobs` as one batch that the process `pid` on `host` runs."""
    worker = WorkerIdentity(node=f"w{pid}@{host}", host=host, pid=pid)
    for job in jobs:
        assert job_claim(job_id=job.pk, worker=worker) is not None
    GenerationJob.objects.filter(pk__in=[j.pk for j in jobs]).update(
        heartbeat_at=timezone.now() - timedelta(seconds=heartbeat_age)
    )


@pytest.fixture
def sent_messages(monkeypatch) -> list[str]:
    sent: list[str] = []
    monkeypatch.setattr(
        "inference.tasks.run_generation.apply_async", lambda **kw: sent.append(kw["args"][0])
    )
    return sent


def test_the_sweep_hands_back_a_dead_processs_whole_batch_in_seconds(
    researcher, demo, sent_messages, monkeypatch, django_capture_on_commit_callbacks
):
    """A process on this host that is gone (kill -9): its batch is queued again at the first
    sweep a few heartbeats later, all in one transaction, not after JOBS_STALE_SECONDS; a
    live process's batch with the same quiet heartbeat is left alone."""
    import socket

    monkeypatch.setattr("core.workers.consumers", lambda queue: 1)  # the queue is served
    with override_settings(JOBS_MAX_ACTIVE_PER_USER=10):
        jobs = [
            job_submit(user=researcher, variant=demo, prompts=[f"p{i}"], params={})
            for i in range(6)
        ]
    here = socket.gethostname()
    _hold(jobs[:4], host=here, pid=_dead_pid(), heartbeat_age=5)
    _hold(jobs[4:], host=here, pid=os.getppid(), heartbeat_age=5)
    sent_messages.clear()

    with (
        override_settings(JOBS_STALE_SECONDS=60, JOBS_HEARTBEAT_SECONDS=1),
        django_capture_on_commit_callbacks(execute=True) as callbacks,
    ):
        result = jobs_sweep_stuck()

    assert result.requeued == 4
    states = dict(GenerationJob.objects.values_list("pk", "state"))
    assert [states[j.pk] for j in jobs] == [JobState.QUEUED] * 4 + [JobState.RUNNING] * 2
    assert sorted(sent_messages) == sorted(str(j.pk) for j in jobs[:4])
    assert len(callbacks) >= 4  # every message went out after the one commit


def test_a_batch_held_elsewhere_goes_back_when_no_worker_serves_its_queue(
    researcher, demo, sent_messages, monkeypatch, django_capture_on_commit_callbacks
):
    served = {"gpu.demo": 1}
    monkeypatch.setattr("core.workers.consumers", lambda queue: served[queue])
    with override_settings(JOBS_MAX_ACTIVE_PER_USER=10):
        jobs = [
            job_submit(user=researcher, variant=demo, prompts=[f"p{i}"], params={})
            for i in range(3)
        ]
    _hold(jobs, host="elsewhere.example", pid=4242, heartbeat_age=10)

    with override_settings(JOBS_STALE_SECONDS=60, JOBS_HEARTBEAT_SECONDS=1):
        assert jobs_sweep_stuck().requeued == 0  # its worker still announces the queue
        served["gpu.demo"] = 0  # its presence keys lapsed: the worker is gone
        with django_capture_on_commit_callbacks(execute=True):
            assert jobs_sweep_stuck().requeued == 3


def test_taking_back_a_batch_leaves_other_processes_jobs_and_marks_the_messages_unsent(
    researcher, demo, sent_messages
):
    with override_settings(JOBS_MAX_ACTIVE_PER_USER=10):
        jobs = [
            job_submit(user=researcher, variant=demo, prompts=[f"p{i}"], params={})
            for i in range(5)
        ]
    _hold(jobs[:3], host="h1", pid=111, heartbeat_age=0)
    _hold(jobs[3:], host="h1", pid=222, heartbeat_age=0)
    first = GenerationJob.objects.get(pk=jobs[1].pk)

    states = jobs_take_back_batch(job=first, reason="its worker process died", requeue=False)

    assert states == {j.pk: JobState.QUEUED for j in jobs[:3]}
    rows = {r.pk: r for r in GenerationJob.objects.all()}
    assert all(rows[j.pk].state == JobState.RUNNING for j in jobs[3:])
    # No new message: the caller claims them; the sweep sends any it leaves queued.
    assert not any(rows[j.pk].message_sent for j in jobs[:3])


@given(
    holders=st.lists(
        st.tuples(st.booleans(), st.integers(min_value=1, max_value=3)), min_size=1, max_size=4
    )
)
@hypothesis_settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_sweep_queues_exactly_the_jobs_of_dead_processes(holders, researcher, demo):
    """Over any mix of batches (a dead or a live process, 1-3 jobs each, quiet heartbeats),
    one sweep queues every job of a dead process and no other, each exactly once."""
    import socket

    from inference.models import JobEvent

    GenerationJob.objects.all().delete()
    here, live = socket.gethostname(), os.getppid()
    expected = set()
    with (
        pytest.MonkeyPatch.context() as patch,
        override_settings(
            JOBS_MAX_ACTIVE_PER_USER=100,
            JOBS_TOKENS_PER_DAY=10**9,
            JOBS_STALE_SECONDS=60,
            JOBS_HEARTBEAT_SECONDS=1,
        ),
    ):
        patch.setattr("core.workers.consumers", lambda queue: 1)
        patch.setattr("inference.tasks.run_generation.apply_async", lambda **kw: None)
        for is_dead, count in holders:
            jobs = [
                job_submit(user=researcher, variant=demo, prompts=["p"], params={})
                for _ in range(count)
            ]
            _hold(jobs, host=here, pid=_dead_pid() if is_dead else live, heartbeat_age=5)
            if is_dead:
                expected |= {j.pk for j in jobs}
        result = jobs_sweep_stuck()

    states = dict(GenerationJob.objects.values_list("pk", "state"))
    assert {pk for pk, state in states.items() if state == JobState.QUEUED} == expected
    assert result.requeued == len(expected)
    handed_back = list(
        JobEvent.objects.filter(from_state=JobState.RUNNING, to_state=JobState.QUEUED).values_list(
            "job_id", flat=True
        )
    )
    assert sorted(handed_back) == sorted(expected)  # each once
