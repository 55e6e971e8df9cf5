"""Test harness: real services for the whole suite.

- PostgreSQL and Redis: the machine's own (`make test` starts them if they are stopped).
- S3: a private SeaweedFS on free ports, started once per run by the `s3` fixture.
- Celery: real worker processes started by `celery_worker`, talking to the test database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test.utils import override_settings

from devtools.services import SeaweedConfig, start_seaweed, stop_process

ROOT = Path(__file__).resolve().parent

pytest_plugins = ["accounts.tests.cast"]


class S3Server:
    def __init__(self, cfg: SeaweedConfig, proc: subprocess.Popen, bucket: str):
        self.cfg = cfg
        self.proc = proc
        self.bucket = bucket

    @property
    def endpoint(self) -> str:
        return self.cfg.endpoint

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (a worker, a client) that must use this server."""
        return {
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_ACCESS_KEY_ID": self.cfg.access_key,
            "S3_SECRET_ACCESS_KEY": self.cfg.secret_key,
            "S3_BUCKET": self.bucket,
        }


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server with signature checking, and the portal's settings pointed at it."""
    from weights import storage

    data_dir = tmp_path_factory.mktemp("seaweedfs")
    cfg = SeaweedConfig.on_free_ports(data_dir, access_key="test-key", secret_key=uuid.uuid4().hex)
    proc = start_seaweed(cfg, log_path=data_dir / "weed.log", timeout=90)
    server = S3Server(cfg, proc, bucket=f"test-{uuid.uuid4().hex[:8]}")
    overrides = override_settings(
        S3_ENDPOINT_URL=server.endpoint,
        S3_ACCESS_KEY_ID=cfg.access_key,
        S3_SECRET_ACCESS_KEY=cfg.secret_key,
        S3_BUCKET=server.bucket,
    )
    overrides.enable()
    storage.reset_client()
    # The gateway can answer before the filer behind it takes writes: retry the first one.
    deadline = time.monotonic() + 60
    while True:
        try:
            storage.ensure_bucket()
            break
        except storage.S3Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        yield server
    finally:
        overrides.disable()
        storage.reset_client()
        stop_process(proc, grace=1)


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen, log_path: Path, name: str):
        self.proc = proc
        self.log_path = log_path
        self.name = name

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, grace=5)


def _worker_env(s3_server: S3Server | None, extra: dict[str, str] | None) -> dict[str, str]:
    from django.db import connection

    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": (
                f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/"
                f"{db['NAME']}"
            ),
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if s3_server is not None:
        env.update(s3_server.env())
    env.update(extra or {})
    return env


@pytest.fixture
def celery_worker(request: pytest.FixtureRequest, tmp_path: Path):
    """Start real Celery worker processes: `celery_worker(queues=["default"])`.

    The test must use the `transactional_db` fixture so the worker sees committed rows.
    Workers are killed at the end of the test.
    """
    from portal.celery import app

    started: list[WorkerProcess] = []

    def start(
        *,
        queues: list[str] | None = None,
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        s3_server: S3Server | None = None,
        timeout: float = 60,
    ) -> WorkerProcess:
        name = f"test-{uuid.uuid4().hex[:8]}@localhost"
        log_path = tmp_path / f"{name}.log"
        command = [
            sys.executable, "-m", "celery", "-A", "portal", "worker",
            "-Q", ",".join(queues or ["default"]),
            "-n", name, "-c", str(concurrency), "-P", "prefork",
            "--without-gossip", "--without-mingle", "-l", "INFO",
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=_worker_env(s3_server, env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(proc, log_path, name)
        started.append(worker)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{worker.log()[-3000:]}")
            if app.control.ping(destination=[name], timeout=0.5):
                return worker
        raise TimeoutError(f"worker did not answer within {timeout}s:\n{worker.log()[-3000:]}")

    yield start
    for worker in started:
        worker.stop()
