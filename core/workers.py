"""Which job queues a live worker consumes right now.

Each Celery worker writes one short-lived Redis key per queue it consumes and refreshes it
every `WORKER_PRESENCE_SECONDS` (`portal/celery.py`); a worker that stops deletes its keys, one
that is killed lets them expire after three periods. Readers count keys, which costs one
SCAN instead of a broadcast to every worker and a wait for their answers.
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


def announce(*, node: str, queues: list[str]) -> None:
    """Say that `node` consumes `queues` for the next few periods."""
    pipe = client().pipeline()
    for queue in queues:
        pipe.set(_key(queue, node), "1", px=int(ttl_seconds() * 1000))
    pipe.execute()


def withdraw(*, node: str, queues: list[str]) -> None:
    if queues:
        client().delete(*(_key(queue, node) for queue in queues))


def consumers(queue: str) -> int | None:
    """How many live workers consume `queue`; None when Redis cannot be asked."""
    try:
        return sum(1 for _ in client().scan_iter(match=_key(queue, "*"), count=200))
    except redis.RedisError:
        return None
