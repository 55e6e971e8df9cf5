"""Real Celery worker processes for the tests, on the test database, Redis and S3."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Protocol

from django.conf import settings

from devtools.services import stop_process

ROOT = Path(__file__).resolve().parents[2]


class S3Like(Protocol):
    def env(self) -> dict[str, str]: ...


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen, log_path: Path, name: str):
        self.proc = proc
        self.log_path = log_path
        self.name = name

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        """Pids of the prefork pool's processes (the ones that run tasks)."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        stop_process(self.proc, grace=5)


def _worker_env(s3_server: S3Like | None, extra: dict[str, str] | None) -> dict[str, str]:
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


def start_worker_process(
    *,
    log_dir: Path,
    queues: list[str] | None = None,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
    s3_server: S3Like | None = None,
    timeout: float = 90,
) -> WorkerProcess:
    """A real Celery worker process on the test database, Redis and (given) S3 server;
    returns once it answers a ping."""
    from portal.celery import app

    name = f"test-{uuid.uuid4().hex[:8]}@localhost"
    log_path = log_dir / f"{name}.log"
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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{worker.log()[-3000:]}")
        if app.control.ping(destination=[name], timeout=0.5):
            return worker
    worker.stop()
    raise TimeoutError(f"worker did not answer within {timeout}s:\n{worker.log()[-3000:]}")
