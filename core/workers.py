"""Which job queues a live worker consumes right now.

Each Celery worker writes one short-lived Redis key per queue it consumes and refreshes it
every `WORKER_PRESENCE_SECONDS` (`portal/celery.py`); a worker that stops deletes its keys, one
that is killed lets them expire after three periods. Readers count keys, which costs one
SCAN instead of a broadcast to every worker and a wait for their answers. A key's value is
the number of tensor-parallel ranks (processes, one GPU each on GPUs) the worker runs the
size on: 1 for a single process, 8 for 65B across eight GPUs.
"""

from __future__ import annotations

import functools

import redis
from django.conf import settings

PREFIX = "portal:consumer:"


@functools.lru_cache(maxsize=4)
def _client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)


def client() -> redis.Redis:
    # The broker's Redis: where the workers are connected anyway.
    return _client_for(settings.CELERY_BROKER_URL)


def _key(queue: str, node: str) -> str:
    return f"{PREFIX}{queue}:{node}"


def ttl_seconds() -> float:
    return 3 * settings.WORKER_PRESENCE_SECONDS


def announce(*, node: str, queues: list[str], ranks: dict[str, int] | None = None) -> None:
    """Say that `node` consumes `queues` for the next few periods, each on `ranks[queue]`
    tensor-parallel ranks (1 when not given)."""
    ranks = ranks or {}
    pipe = client().pipeline()
    for queue in queues:
        pipe.set(_key(queue, node), str(ranks.get(queue, 1)), px=int(ttl_seconds() * 1000))
    pipe.execute()


def withdraw(*, node: str, queues: list[str]) -> None:
    if queues:
        client().delete(*(_key(queue, node) for queue in queues))


def consumers(queue: str) -> int | None:
    """How many live workers consume `queue`; None when Redis cannot be asked."""
    ranks = serving(queue)
    return None if ranks is None else len(ranks)


def _ranks(value: bytes | None) -> int:
    try:
        return max(1, int(value or b"1"))
    except ValueError:  # a key written before values carried the rank count
        return 1


def serving(queue: str) -> list[int] | None:
    """The rank count of each live worker of `queue` (largest first); None when Redis
    cannot be asked."""
    try:
        keys = list(client().scan_iter(match=_key(queue, "*"), count=200))
        values = client().mget(keys) if keys else []
    except redis.RedisError:
        return None
    # A key that lapsed between the SCAN and the MGET is a worker that just went away.
    return sorted((_ranks(v) for v in values if v is not None), reverse=True)


def served() -> dict[str, list[int]] | None:
    """Every queue some live worker consumes, with each worker's rank count; None when
    Redis cannot be asked (for /healthz)."""
    try:
        keys = list(client().scan_iter(match=f"{PREFIX}*", count=500))
        values = client().mget(keys) if keys else []
    except redis.RedisError:
        return None
    out: dict[str, list[int]] = {}
    for key, value in zip(keys, values, strict=True):
        if value is None:
            continue
        queue = key.decode().removeprefix(PREFIX).partition(":")[0]  # queues have no ":"
        out.setdefault(queue, []).append(_ranks(value))
    return {queue: sorted(r, reverse=True) for queue, r in sorted(out.items())}
