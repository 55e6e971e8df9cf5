"""Fixtures of the jobs tests: the demo checkpoint, published to the test S3 server, and a
real Celery worker process serving the `gpu.demo` queue."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from portal.tests.workers import WorkerProcess, start_worker_process


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory) -> Path:
    """The tiny demo checkpoint, built once per run (few training steps: its text is
    noise, which is all these tests need)."""
    from inference.llama.demo import build_demo_checkpoint

    directory = tmp_path_factory.mktemp("demo-checkpoint") / "demo"
    build_demo_checkpoint(directory, steps=20, seed=0)
    return directory


@pytest.fixture
def published_demo(s3, demo_checkpoint, db):
    """The demo size with its checkpoint stored in S3 and its manifest rows written."""
    from catalog.models import ModelVariant
    from weights.services import variant_publish

    variant = ModelVariant.objects.get(slug="demo")
    variant_publish(variant=variant, directory=demo_checkpoint)
    variant.refresh_from_db()
    return variant


@pytest.fixture
def generate_token(researcher) -> str:
    from accounts.services import token_create

    return token_create(user=researcher, name="notebook", scopes=["generate"])[1]


@pytest.fixture
def api_client():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def own_presence(monkeypatch):
    """Worker presence keys of this test alone: the workers that other tests start (the
    session's gpu.demo worker, one whose keys outlive a slow shutdown by up to three
    periods) write under the real prefix, which this test then does not read."""
    import uuid

    from core import workers

    monkeypatch.setattr(workers, "PREFIX", f"{workers.PREFIX}test-{uuid.uuid4().hex[:8]}:")


@pytest.fixture(scope="session")
def jobs_worker_factory(
    s3, django_db_setup, django_db_blocker, tmp_path_factory
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes that live for the whole run (the database is flushed
    between tests; the worker does not mind). Each decode step is slowed to 30 ms so a
    test can catch a job in the middle."""
    import redis

    # This run's own Redis database: drop queue messages an earlier run left behind.
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    started: list[WorkerProcess] = []

    def start(**env: str) -> WorkerProcess:
        tmp = tmp_path_factory.mktemp("jobs-worker")
        with django_db_blocker.unblock():
            worker = start_worker_process(
                log_dir=tmp,
                queues=["gpu.demo"],
                s3_server=s3,
                env={
                    "JOBS_MODEL_CACHE_DIR": str(tmp / "models"),
                    "JOBS_STEP_DELAY_SECONDS": "0.03",
                    "JOBS_MAX_ATTEMPTS": "2",
                    **env,
                },
            )
        started.append(worker)
        return worker

    yield start
    with django_db_blocker.unblock():
        for worker in started:
            worker.stop()


@pytest.fixture(scope="session")
def _session_worker(jobs_worker_factory) -> WorkerProcess:
    return jobs_worker_factory()


@pytest.fixture
def jobs_worker(_session_worker) -> Iterator[WorkerProcess]:
    """The shared worker; after the test, every job still active is cancelled and waited
    for, so no batch of this test runs on into the next one."""
    yield _session_worker
    from inference.models import ACTIVE_STATES, GenerationJob
    from inference.services import job_cancel

    for job in GenerationJob.objects.filter(state__in=ACTIVE_STATES):
        job_cancel(job=job)
    deadline = time.monotonic() + 30
    while GenerationJob.objects.filter(state__in=ACTIVE_STATES).exists():
        if time.monotonic() > deadline:
            raise AssertionError("jobs still active 30 s after the test")
        time.sleep(0.1)


def wait_for_job(job, *, states=("succeeded", "failed", "cancelled"), timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.state in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job stayed {job.state} (wanted {states}); error={job.error!r}")
