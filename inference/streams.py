"""Reading a job's events for the SSE endpoints: the Redis stream while it lasts, the
database as the record when the stream is gone or Redis is down."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from inference import events
from inference.models import TERMINAL_STATES, GenerationJob

POLL_MS = 1000
KEEPALIVE_POLLS = 15


def job_events(
    job: GenerationJob, *, after: str = "0", deadline: float | None = None
) -> Iterator[tuple[str, str, dict] | None]:
    """(stream id, event, data) until the job's `end`; None now and then while nothing
    happens (a chance to send a keep-alive). The last item is always an `end` event; one
    made from the database row when the stream lacks it."""
    last = after or "0"
    while True:
        try:
            batch = events.events_read(job.pk, after=last, block_ms=POLL_MS)
        except events.RedisError:
            batch = []
            time.sleep(POLL_MS / 1000)
        for entry_id, event, data in batch:
            last = entry_id or last
            yield entry_id, event, data
            if event == "end":
                return
        if batch:
            continue
        state, error = GenerationJob.objects.filter(pk=job.pk).values_list(
            "state", "error"
        ).first() or ("failed", "The job was deleted.")
        if state in TERMINAL_STATES:
            # The worker writes the row before the `end` event: give it one more look.
            try:
                batch = events.events_read(job.pk, after=last, block_ms=200)
            except events.RedisError:
                batch = []
            for entry_id, event, data in batch:
                last = entry_id or last
                yield entry_id, event, data
                if event == "end":
                    return
            yield "", "end", {"state": state, "error": error}
            return
        if deadline is not None and time.monotonic() > deadline:
            yield "", "timeout", {}
            return
        yield None


def sse(event: str | None, data: Any, *, event_id: str = "") -> bytes:
    lines = []
    if event_id:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines.extend(f"data: {line}" for line in payload.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


KEEPALIVE = b": keep-alive\n\n"
