"""Redis side channels of a job: its token stream and the cancel broadcast.

The database stays the record (state, outputs); these only make things fast:

- Each job has a Redis stream `portal:jobs:<id>:events` the worker appends to (`tokens`
  entries, a list of the tokens decoded since the last write, while it decodes; `state` when
  it starts; `end` after the final row is written); readers get one `token` event per token.
  A reader (the SSE endpoints) replays it from the start or from `Last-Event-ID`, so a late
  or reconnecting reader misses nothing. It expires JOBS_STREAM_TTL_SECONDS after the last write.
- `portal:jobs:cancel` is a pub/sub channel: the cancel service publishes a job id and the
  worker decoding it stops it before the next token. Workers also poll the database flag,
  so a lost message only delays a cancellation by about a second.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

CANCEL_CHANNEL = "portal:jobs:cancel"
RedisError = redis.RedisError


def stream_key(job_id: Any) -> str:
    return f"portal:jobs:{job_id}:events"


@functools.lru_cache(maxsize=4)
def _client_for(url: str, socket_timeout: float | None) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=socket_timeout, retry_on_timeout=False
    )


def client(*, socket_timeout: float | None = 5) -> redis.Redis:
    return _client_for(settings.REDIS_URL, socket_timeout)


class EventBuffer:
    """Worker side: events gathered over decode steps, sent in one round trip.

    `flush()` sends at most every FLUSH_SECONDS (a small model decodes a token in well
    under a millisecond, and a round trip per step would cost as much as the step), and at
    once when an `end` is pending or when `force` is set.
    """

    FLUSH_SECONDS = 0.01

    def __init__(self) -> None:
        self._pending: list[tuple[str, str, dict]] = []
        self._warned = False
        self._expiring: set[str] = set()  # keys whose TTL this buffer has already set
        self._last_flush = 0.0
        self._urgent = False

    def add(self, job_id: Any, event: str, data: dict) -> None:
        self._pending.append((stream_key(job_id), event, data))
        if event != "token":
            self._urgent = True

    def flush(self, *, force: bool = False) -> None:
        if not self._pending:
            return
        now = time.monotonic()
        if not (force or self._urgent or now - self._last_flush >= self.FLUSH_SECONDS):
            return
        self._last_flush = now
        self._urgent = False
        pending, self._pending = self._pending, []
        ttl = settings.JOBS_STREAM_TTL_SECONDS
        try:
            pipe = client().pipeline(transaction=False)
            for key, event, data in _coalesce(pending):
                pipe.xadd(key, {"event": event, "data": json.dumps(data)})
            # The TTL is set on a stream's first write and again at its end, not every step.
            for key in {k for k, e, _ in pending if k not in self._expiring or e == "end"}:
                pipe.expire(key, ttl)
                self._expiring.add(key)
            pipe.execute()
        except RedisError as exc:
            # Streaming is a convenience: the job goes on and its result lands in the DB.
            if not self._warned:
                logger.warning("cannot stream job tokens to Redis: %s", exc)
                self._warned = True


def _coalesce(pending: list[tuple[str, str, Any]]) -> list[tuple[str, str, Any]]:
    """One `tokens` entry (a list) per stream for each run of `token` events, so a flush
    writes one entry per job rather than one per token; other events keep their place."""
    out: list[tuple[str, str, Any]] = []
    open_runs: dict[str, list] = {}
    for key, event, data in pending:
        if event == "token":
            run = open_runs.get(key)
            if run is None:
                run = open_runs[key] = []
                out.append((key, "tokens", run))
            run.append(data)
        else:
            open_runs.pop(key, None)
            out.append((key, event, data))
    return out


def cancel_publish(job_id: Any) -> None:
    try:
        client().publish(CANCEL_CHANNEL, str(job_id))
    except RedisError as exc:
        logger.warning("cannot broadcast the cancellation of job %s: %s", job_id, exc)


def events_read(
    job_id: Any, *, after: str = "0", block_ms: int = 1000, count: int = 500
) -> list[tuple[str, str, dict]]:
    """Events after the stream id `after` ("0": from the start), waiting up to `block_ms`."""
    timeout = block_ms / 1000 + 5
    response = client(socket_timeout=timeout).xread(
        {stream_key(job_id): after}, count=count, block=block_ms
    )
    events = []
    for _key, entries in response or []:
        for entry_id, fields in entries:
            entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            event = fields[b"event"].decode()
            data = json.loads(fields[b"data"])
            if event == "tokens":
                # Only the entry's last token carries its id: a reader resumes after it.
                for i, token in enumerate(data):
                    events.append((entry_id if i == len(data) - 1 else "", "token", token))
            else:
                events.append((entry_id, event, data))
    return events


def _publish_one(job_id: Any, event: str, data: dict) -> None:
    buffer = EventBuffer()
    buffer.add(job_id, event, data)
    buffer.flush()


def end_publish(job_id: Any, state: str, error: str = "") -> None:
    """The job ended outside a worker (cancelled while queued, failed by the sweep)."""
    _publish_one(job_id, "end", {"state": str(state), "error": error})


def reset_publish(job_id: Any) -> None:
    """The job was taken back from a dead worker and will run again: readers drop what the
    failed attempt streamed (a rerun with the job's seed produces the same tokens)."""
    _publish_one(job_id, "reset", {})
