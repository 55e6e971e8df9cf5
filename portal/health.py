"""`/healthz`: is each dependency reachable, and how fast did it answer.

Each check runs in its own thread with a short timeout, so one hung dependency costs the
probe about a second rather than the sum of every timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connection

from core import storage, workers
from portal.celery import app

Check = Callable[[], str | None]


def _check_database() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return None


def redis_client():
    import redis

    return redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1, retry_on_timeout=False
    )


def _check_redis() -> str | None:
    redis_client().ping()
    return None


def _check_s3() -> str | None:
    storage.ping()
    return None


def _check_worker() -> str | None:
    # The broker must answer first: Celery's ping would otherwise retry the connection.
    redis_client().ping()
    replies = app.control.ping(timeout=settings.HEALTHZ_WORKER_TIMEOUT) or []
    if not replies:
        raise RuntimeError("no Celery worker answered a ping")
    return f"{len(replies)} worker(s); {_served_sizes()}"


def _served_sizes() -> str:
    """Which sizes live workers serve, and on how many tensor-parallel ranks:
    "sizes served: gpu.65b (1 worker x 8 ranks), gpu.7b (2 workers x 1 rank)"."""
    served = {q: r for q, r in (workers.served() or {}).items() if q.startswith("gpu.")}
    if not served:
        return "no size is served"
    parts = []
    for queue, ranks in served.items():
        n, most = len(ranks), max(ranks)
        parts.append(
            f"{queue} ({n} worker{'s' if n != 1 else ''} x {most} rank{'s' if most != 1 else ''})"
        )
    return "sizes served: " + ", ".join(parts)


CHECKS: dict[str, Check] = {
    "database": _check_database,
    "redis": _check_redis,
    "s3": _check_s3,
    "worker": _check_worker,
}


def _run(name: str, check: Check) -> dict:
    started = time.perf_counter()
    try:
        detail = check()
        result = {"status": "ok"}
        if detail:
            result["detail"] = detail
    except Exception as exc:  # any failure of a dependency is reported, never raised
        result = {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def run_checks() -> dict[str, dict]:
    # The database check stays on the request's thread (and its connection); the network
    # checks run side by side.
    others = {name: check for name, check in CHECKS.items() if name != "database"}
    with ThreadPoolExecutor(max_workers=len(others)) as pool:
        futures = {name: pool.submit(_run, name, check) for name, check in others.items()}
        results = {"database": _run("database", CHECKS["database"])}
        results.update({name: future.result() for name, future in futures.items()})
    return results
