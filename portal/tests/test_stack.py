"""`make run`'s stack: up with /healthz 200 within 60 s, Ctrl-C stops every child, data kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from devtools.services import SeaweedConfig, free_port

ROOT = Path(__file__).resolve().parents[2]


def _stack_env(var: Path) -> dict[str, str]:
    # The stack must run on its embedded defaults, not on the test run's services.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "DATABASE_", "REDIS_", "CELERY_", "S3_", "PORTAL_"))
    }
    s3 = SeaweedConfig.on_free_ports(var / "s3")
    ports = {
        "PORTAL_PORT": free_port(),
        "PORTAL_REDIS_PORT": free_port(),
        "PORTAL_S3_PORT": s3.s3_port,
        "PORTAL_S3_MASTER_PORT": s3.master_port,
        "PORTAL_S3_VOLUME_PORT": s3.volume_port,
        "PORTAL_S3_FILER_PORT": s3.filer_port,
    }
    env.update({k: str(v) for k, v in ports.items()})
    env["PORTAL_VAR_DIR"] = str(var)
    return env


def _healthz(port: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_healthy(proc: subprocess.Popen, port: str, timeout: float) -> float:
    started = time.monotonic()
    last: tuple[int, dict] | None = None
    while time.monotonic() - started < timeout:
        assert proc.poll() is None, "the stack exited on its own"
        try:
            last = _healthz(port)
            if last[0] == 200:
                return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"/healthz not 200 within {timeout}s; last answer: {last}")


def _start(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "devtools.stack"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _ctrl_c(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends to the foreground group
    proc.wait(timeout=30)


def _manage(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", f"from accounts.models import User; {code}"],
        cwd=ROOT,
        env={**env, "DJANGO_DEBUG": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_the_stack_comes_up_healthy_stops_on_ctrl_c_and_keeps_its_data(tmp_path):
    var = tmp_path / "var"
    env = _stack_env(var)
    log = tmp_path / "stack.log"

    proc = _start(env, log)
    try:
        _wait_healthy(proc, env["PORTAL_PORT"], timeout=60)
        _ctrl_c(proc)
        deadline = time.monotonic() + 15
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(proc.pid), "a child outlived Ctrl-C"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text(errors="replace")
    assert f"http://127.0.0.1:{env['PORTAL_PORT']}/" in output
    for name in ("web.1", "worker.1", "beat.1", "redis.1", "s3.1"):
        assert name in output, f"no prefixed log lines from {name}"

    # Something written between two runs is still there on the next one.
    mark = _manage(env, "User.objects.create_user('keep@example.org')")
    assert mark.returncode == 0, mark.stderr
    proc = _start(env, log)
    try:
        _wait_healthy(proc, env["PORTAL_PORT"], timeout=60)
        count = _manage(env, "print(User.objects.filter(email='keep@example.org').count())")
        assert count.stdout.strip().splitlines()[-1] == "1"
    finally:
        _ctrl_c(proc)
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
