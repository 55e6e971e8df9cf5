"""Fixtures of the jobs tests: the demo checkpoint, published to the test S3 server, and a
real Celery worker process serving the `gpu.demo` queue."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory) -> Path:
    """The tiny demo checkpoint, built once per run (few training steps: its text is
    noise, which is all these tests need)."""
    from inference.llama.demo import build_demo_checkpoint

    directory = tmp_path_factory.mktemp("demo-checkpoint") / "demo"
    build_demo_checkpoint(directory, steps=20, seed=0)
    return directory


# Rows the migrations seed (catalog, license, the variants' license). The transactional
# tests here use serialized_rollback like the rest of the suite, which restores them; this
# puts them back idempotently all the same, in case a plain flush ran before.
SEED_MIGRATIONS = [
    "weights.migrations.0002_catalog",
    "accounts.migrations.0003_license_and_reviewers",
    "weights.migrations.0004_variant_license",
]


@pytest.fixture
def seeded(transactional_db) -> None:
    import importlib

    from django.apps import apps

    for name in SEED_MIGRATIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue  # renamed by its owner: that app's own tests will say so
        module.forwards(apps, None)


@pytest.fixture
def published_demo(s3, demo_checkpoint, db):
    """The demo size with its checkpoint stored in S3 and its manifest rows written."""
    from weights.models import ModelVariant
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


class JobsWorker:
    def __init__(self, proc: subprocess.Popen, log_path: Path, name: str):
        self.proc = proc
        self.log_path = log_path
        self.name = name

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        """Pids of the prefork pool's processes (the ones that run tasks)."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]


def _start_worker(s3, tmp: Path, env: dict[str, str]) -> JobsWorker:
    from django.db import connection

    from portal.celery import app

    db = connection.settings_dict
    name = f"jobs-{uuid.uuid4().hex[:8]}@localhost"
    log_path = tmp / f"{name}.log"
    full_env = {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "PYTHONUNBUFFERED": "1",
        "JOBS_MODEL_CACHE_DIR": str(tmp / "models"),
        **s3.env(),
        **env,
    }
    command = [
        sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", "gpu.demo",
        "-n", name, "-c", "1", "-P", "prefork", "--without-gossip", "--without-mingle",
        "-l", "INFO",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = JobsWorker(proc, log_path, name)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{worker.log()[-3000:]}")
        if app.control.ping(destination=[name], timeout=0.5):
            return worker
    raise TimeoutError(f"worker did not answer:\n{worker.log()[-3000:]}")


@pytest.fixture(scope="session")
def jobs_worker_factory(
    s3, django_db_setup, django_db_blocker, tmp_path_factory
) -> Iterator[Callable[..., JobsWorker]]:
    """Start worker processes that live for the whole run (the database is flushed
    between tests; the worker does not mind). Each decode step is slowed to 30 ms so a
    test can catch a job in the middle."""
    import redis

    from devtools.services import stop_process

    # This run's own Redis database: drop queue messages an earlier run left behind.
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    started: list[JobsWorker] = []

    def start(**env: str) -> JobsWorker:
        tmp = tmp_path_factory.mktemp("jobs-worker")
        with django_db_blocker.unblock():
            worker = _start_worker(
                s3, tmp, {"JOBS_STEP_DELAY_SECONDS": "0.03", "JOBS_MAX_ATTEMPTS": "2", **env}
            )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        stop_process(worker.proc, grace=5)


@pytest.fixture(scope="session")
def _session_worker(jobs_worker_factory) -> JobsWorker:
    return jobs_worker_factory()


@pytest.fixture
def jobs_worker(_session_worker) -> Iterator[JobsWorker]:
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
