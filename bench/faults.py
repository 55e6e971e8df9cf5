"""Faults injected into a real local stack, and how fast it recovers (prints; exits 1 when a
job did not finish exactly once).

    .venv/bin/python bench/faults.py [--jobs 4] [--new-tokens 120] [--outage 5]
                                     [--file-mib 96] [--only worker,redis,s3]

The stack is the script's own: a scratch PostgreSQL database (`bench_portal_faults` on
DATABASE_URL's server), its own Redis (redis-server on a free port, append-only file on, so
a restart keeps the queues) and SeaweedFS (on free ports), the portal's WSGI app on a local
port (bench/_harness.py), Celery beat (the sweep every JOBS_SWEEP_SECONDS, 10 s), one worker
for the `default` queue (where the sweep runs) and one worker (`-c 1`) serving the demo
size. Decode steps are slowed to 40 ms (JOBS_STEP_DELAY_SECONDS) so a batch is still
running when it is interrupted.

1. worker: `--jobs` jobs are submitted at once and run as one batch; the demo worker's whole
   process group (main process and pool child) gets SIGKILL mid-batch and the script starts
   it again under the same name, as `make run`'s supervisor does. Recovery: from the new
   worker answering a ping to every job running again, and to every job finished. Printed
   too: in how many batches the handed-back jobs ran (one: they rejoined together).
2. redis: Redis is stopped (SIGTERM), `--jobs` jobs are submitted through the API during
   the outage (each answers 201: the job is recorded, its message not sent), Redis is
   started again after `--outage` s. Recovery: from Redis answering to every job running,
   and to every job finished (the sweep sends the unsent messages).
3. s3: the Python client's download engine (portal_client.transfer, as `portal-client
   download` uses it; 4 ranged GET streams, throttled to about 40 MB/s so the download
   lasts a few seconds) fetches a `--file-mib` MiB object; SeaweedFS gets SIGKILL at about
   30 % and is started again on the same ports and data. Recovery: from S3 answering to the
   first byte received again, and to the download finishing with its SHA-256 checked.

Exactly once: every job ends `succeeded` with one output, one `running -> succeeded` event
and one result; each handed-back job has one `running -> queued` event per fault.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._harness import Portal, database, environment  # noqa: E402
from devtools.services import (  # noqa: E402
    SeaweedConfig,
    free_port,
    redis_command,
    start_seaweed,
    stop_process,
)

DB_NAME = "bench_portal_faults"
TARGET_SECONDS = 15.0
GPU_NODE = "faults-gpu@localhost"
DEFAULT_NODE = "faults-default@localhost"


def _environment(tmp: Path, redis_port: int) -> dict[str, str]:
    return environment(
        db_name=DB_NAME,
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        JOBS_MAX_ACTIVE_PER_USER="32",
        JOBS_TOKENS_PER_DAY="100000000",
        JOBS_MAX_BATCH_SIZE="8",
        JOBS_STEP_DELAY_SECONDS="0.04",
        JOBS_TORCH_THREADS="1",
        JOBS_MODEL_CACHE_DIR=str(tmp / "models"),
        PORTAL_VAR_DIR=str(tmp / "var"),
        PYTHONUNBUFFERED="1",
    )


class Stack:
    """The processes the script starts, stops and kills."""

    def __init__(self, tmp: Path, env: dict[str, str], redis_port: int, s3: SeaweedConfig):
        self.tmp, self.env, self.redis_port, self.s3 = tmp, env, redis_port, s3
        self.redis: subprocess.Popen | None = None
        self.seaweed: subprocess.Popen | None = None
        self.gpu: subprocess.Popen | None = None
        self.default: subprocess.Popen | None = None
        self.beat: subprocess.Popen | None = None

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen:
        with open(self.tmp / log_name, "ab") as log:
            return subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    # -- Redis ------------------------------------------------------------------------------
    def start_redis(self) -> float:
        """Start Redis; returns the monotonic time it answered."""
        import redis

        self.redis = self._spawn(
            redis_command(port=self.redis_port, data_dir=self.tmp / "redis"), "redis.log"
        )
        client = redis.Redis(port=self.redis_port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return time.monotonic()
            except redis.RedisError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not answer")

    def stop_redis(self) -> None:
        assert self.redis is not None
        self.redis.send_signal(signal.SIGTERM)  # it writes its append-only file and exits
        self.redis.wait(timeout=30)

    # -- S3 ---------------------------------------------------------------------------------
    def start_s3(self) -> float:
        self.seaweed = start_seaweed(self.s3, log_path=self.tmp / "weed.log", timeout=120)
        return time.monotonic()

    def kill_s3(self) -> None:
        assert self.seaweed is not None
        os.killpg(self.seaweed.pid, signal.SIGKILL)
        self.seaweed.wait(timeout=10)

    # -- Celery -----------------------------------------------------------------------------
    def _worker(self, node: str, queues: str, log_name: str) -> subprocess.Popen:
        command = [
            sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", queues, "-n", node,
            "-c", "1", "-P", "prefork", "--without-gossip", "--without-mingle", "-l", "INFO",
        ]  # fmt: skip
        return self._spawn(command, log_name)

    def start_gpu_worker(self) -> float:
        """Start the demo worker; returns the monotonic time it answered a ping."""
        self.gpu = self._worker(GPU_NODE, "gpu.demo", "worker-gpu.log")
        return self._wait_ping(GPU_NODE, self.gpu, "worker-gpu.log")

    def kill_gpu_worker(self) -> None:
        assert self.gpu is not None
        os.killpg(self.gpu.pid, signal.SIGKILL)  # the main process and its pool child
        self.gpu.wait(timeout=10)

    def start_support(self) -> None:
        self.default = self._worker(DEFAULT_NODE, "default", "worker-default.log")
        self._wait_ping(DEFAULT_NODE, self.default, "worker-default.log")
        self.beat = self._spawn(
            [
                *(sys.executable, "-m", "celery", "-A", "portal", "beat", "-l", "INFO"),
                *("-s", str(self.tmp / "celerybeat-schedule")),
            ],
            "beat.log",
        )

    def _wait_ping(self, node: str, proc: subprocess.Popen, log_name: str) -> float:
        from portal.celery import app

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{node} exited; see {self.tmp / log_name}")
            try:
                if app.control.ping(destination=[node], timeout=0.3):
                    return time.monotonic()
            except Exception:  # the broker is still reconnecting
                time.sleep(0.2)
        raise TimeoutError(f"{node} did not answer; see {self.tmp / log_name}")

    def stop_all(self) -> None:
        for proc in (self.beat, self.gpu, self.default):
            if proc is not None:
                stop_process(proc, grace=5)
        for proc in (self.seaweed, self.redis):
            if proc is not None:
                stop_process(proc, grace=2)


# --- Jobs ------------------------------------------------------------------------------------


class Api:
    def __init__(self, url: str, token: str) -> None:
        import requests

        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def submit(self, prompt: str, new_tokens: int) -> dict:
        response = self.session.post(
            f"{self.url}/api/v1/jobs",
            json={
                "model": "demo",
                "prompt": prompt,
                "max_new_tokens": new_tokens,
                "temperature": 0,
            },
            timeout=30,
        )
        if response.status_code != 201:
            raise RuntimeError(f"submission answered {response.status_code}: {response.text}")
        return response.json()


def _rows(ids: list[str]) -> list:
    from inference.models import GenerationJob

    return list(GenerationJob.objects.filter(pk__in=ids).order_by("created_at"))


def _wait_jobs(ids: list[str], predicate, timeout: float = 180) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(ids)
        if len(rows) == len(ids) and all(predicate(r) for r in rows):
            return time.monotonic()
        time.sleep(0.05)
    states = [(str(r.pk)[:8], r.state, r.attempts) for r in _rows(ids)]
    raise TimeoutError(f"jobs did not get there in {timeout:.0f}s: {states}")


def _batches(rows) -> int:
    """How many batches ran these jobs: runs in one process whose [started, finished]
    intervals overlap (chained) are one batch."""
    runs = sorted(((r.worker_host, r.worker_pid), r.started_at, r.finished_at) for r in rows)
    batches, current_holder, current_end = 0, None, None
    for holder, started, finished in runs:
        if holder != current_holder or current_end is None or started >= current_end:
            batches += 1
            current_holder, current_end = holder, finished
        else:
            current_end = max(current_end, finished)
    return batches


def _exactly_once(ids: list[str], *, handed_back: int) -> list[str]:
    """Problems with these jobs' ends (empty: each finished exactly once)."""
    from inference.models import JobEvent, JobState

    problems = []
    for row in _rows(ids):
        events = list(
            JobEvent.objects.filter(job=row).values_list("from_state", "to_state").order_by("id")
        )
        ends = events.count((JobState.RUNNING, JobState.SUCCEEDED))
        backs = events.count((JobState.RUNNING, JobState.QUEUED))
        if row.state != JobState.SUCCEEDED or ends != 1 or len(row.outputs) != 1:
            problems.append(
                f"{row.pk}: {row.state}, {ends} result(s), {len(row.outputs)} output(s)"
            )
        elif backs != handed_back:
            problems.append(f"{row.pk}: handed back {backs} time(s), expected {handed_back}")
        elif not row.outputs[0]["token_ids"]:
            problems.append(f"{row.pk}: empty output")
    return problems


# --- The faults --------------------------------------------------------------------------------


def fault_worker(stack: Stack, api: Api, ns) -> dict:
    ids = [api.submit(f"The model {i}", ns.new_tokens)["id"] for i in range(ns.jobs)]
    # All running in one process, with some tokens out: mid-batch.
    _wait_jobs(ids, lambda r: r.state == "running")
    rows = _rows(ids)
    if len({r.worker_pid for r in rows}) != 1:
        raise RuntimeError("the jobs did not start as one batch")
    time.sleep(1.0)
    stack.kill_gpu_worker()
    killed_at = time.monotonic()
    back = stack.start_gpu_worker()
    running = _wait_jobs(ids, lambda r: r.state == "running" and r.attempts == 2)
    done = _wait_jobs(ids, lambda r: r.state in ("succeeded", "failed", "cancelled"))
    rows = _rows(ids)
    return {
        "fault": "worker kill -9 mid-batch",
        "down": back - killed_at,
        "to_running": running - back,
        "to_done": done - back,
        "problems": _exactly_once(ids, handed_back=1),
        "note": f"{len(ids)} jobs of one batch re-ran in {_batches(rows)} batch(es)",
    }


def fault_redis(stack: Stack, api: Api, ns) -> dict:
    from inference.models import GenerationJob

    stack.stop_redis()
    stopped = time.monotonic()
    ids = [api.submit(f"The outage {i}", ns.new_tokens // 4)["id"] for i in range(ns.jobs)]
    unsent = GenerationJob.objects.filter(pk__in=ids, message_sent=False).count()
    time.sleep(max(0.0, ns.outage - (time.monotonic() - stopped)))
    back = stack.start_redis()
    running = _wait_jobs(ids, lambda r: r.state != "queued")
    done = _wait_jobs(ids, lambda r: r.state in ("succeeded", "failed", "cancelled"))
    return {
        "fault": f"Redis stopped {back - stopped:.0f} s",
        "down": back - stopped,
        "to_running": running - back,
        "to_done": done - back,
        "problems": _exactly_once(ids, handed_back=0),
        "note": f"{len(ids)} jobs submitted during the outage (201 each; {unsent} unsent)",
    }


def fault_s3(stack: Stack, ns) -> dict:
    import requests
    from portal_client.transfer import download_file

    from core import storage

    size = ns.file_mib * 1024 * 1024
    source = stack.tmp / "object.bin"
    with open(source, "wb") as handle:
        for _ in range(ns.file_mib):
            handle.write(os.urandom(1024 * 1024))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    storage.upload_file(source, key="faults/object.bin")
    source.unlink()

    received = [0]
    marks: dict[str, float] = {}
    rate = 40 * 1024 * 1024  # bytes/s over the 4 streams, so the download lasts a few seconds
    started = time.monotonic()
    lock = threading.Lock()

    def on_receive(count: int) -> None:
        with lock:
            received[0] += count
            if "back" in marks and "resumed" not in marks:
                marks["resumed"] = time.monotonic()
            ahead = received[0] / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)

    def fresh_url() -> str:
        return storage.presigned_get_url("faults/object.bin", filename="object.bin")

    result: list = []

    def run() -> None:
        try:
            download_file(
                dest=stack.tmp / "download.bin",
                size=size,
                sha256=digest,
                fresh_url=fresh_url,
                session_factory=requests.Session,
                workers=4,
                progress=False,
                on_receive=on_receive,
                timeout=5,
            )
            result.append(time.monotonic())
        except Exception as exc:  # printed in the table
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while received[0] < 0.3 * size and thread.is_alive():
        time.sleep(0.01)
    stack.kill_s3()
    killed = time.monotonic()
    at_kill = received[0]
    back = stack.start_s3()
    marks["back"] = back
    thread.join(300)
    problems = []
    if not result or isinstance(result[0], Exception):
        problems.append(f"download failed: {result[0] if result else 'still running'}")
        done = float("nan")
    else:
        done = result[0]
        if hashlib.sha256((stack.tmp / "download.bin").read_bytes()).hexdigest() != digest:
            problems.append("SHA-256 mismatch")
    resumed = marks.get("resumed", float("nan"))
    return {
        "fault": "S3 (SeaweedFS) kill -9 mid-download",
        "down": back - killed,
        "to_running": resumed - back,
        "to_done": done - back,
        "problems": problems,
        "note": (
            f"{ns.file_mib} MiB, killed at {at_kill / size:.0%}; first byte again "
            f"{resumed - back:.1f} s after S3 answered, the rest at ~40 MB/s"
        ),
    }


# --- Main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=120)
    parser.add_argument("--outage", type=float, default=5.0, help="seconds Redis stays down")
    parser.add_argument("--file-mib", type=int, default=96)
    parser.add_argument("--only", default="worker,redis,s3")
    ns = parser.parse_args()
    which = ns.only.split(",")

    tmp = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    redis_port = free_port()
    s3_cfg = SeaweedConfig.on_free_ports(
        tmp / "s3", access_key="faults", secret_key=uuid.uuid4().hex
    )
    env = _environment(tmp, redis_port)
    env.update(s3_cfg.env(bucket="faults"))
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    database(env["DATABASE_URL"], create=True)
    stack = Stack(tmp, env, redis_port, s3_cfg)
    portal = None
    results = []
    print(f"logs under {tmp}", flush=True)
    try:
        stack.start_redis()
        stack.start_s3()
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from accounts.services import token_create
        from accounts.tests.factories import UserFactory, grant_access
        from catalog.models import ModelVariant
        from core import storage
        from inference.llama.demo import build_demo_checkpoint
        from weights.services import variant_publish

        storage.ensure_bucket(wait=60)
        print("building and publishing the demo checkpoint ...", flush=True)
        build_demo_checkpoint(tmp / "demo", steps=20, seed=0)
        variant_publish(variant=ModelVariant.objects.get(slug="demo"), directory=tmp / "demo")
        user = UserFactory(email="faults@uni.example.edu")
        grant_access(user, "demo")
        token = token_create(user=user, name="faults", scopes=["generate"])[1]
        portal = Portal()
        api = Api(portal.url, token)
        stack.start_support()
        stack.start_gpu_worker()
        # Warm-up: the worker loads the model on its first job.
        warm = api.submit("Warm", 2)["id"]
        _wait_jobs([warm], lambda r: r.state == "succeeded")

        for name in which:
            print(f"fault: {name} ...", flush=True)
            if name == "worker":
                results.append(fault_worker(stack, api, ns))
            elif name == "redis":
                results.append(fault_redis(stack, api, ns))
            elif name == "s3":
                results.append(fault_s3(stack, ns))
            time.sleep(1)
    finally:
        if portal is not None:
            portal.stop()
        from django.db import connections

        connections.close_all()
        stack.stop_all()
        database(env["DATABASE_URL"], create=False)

    load = os.getloadavg()
    print(
        f"\nRecovery on {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at the end; times from the failed part answering again "
        f"(target < {TARGET_SECONDS:.0f} s)"
    )
    print(f"{'fault':38} {'down':>7} {'resumed':>11} {'to done':>9}  exactly once")
    failed = False
    for r in results:
        ok = "yes" if not r["problems"] else "NO: " + "; ".join(r["problems"])
        failed |= bool(r["problems"])
        print(
            f"{r['fault']:38} {r['down']:6.1f}s {r['to_running']:10.1f}s {r['to_done']:8.1f}s  {ok}"
        )
        print(f"{'':38} {r['note']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
