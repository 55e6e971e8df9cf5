"""`make run`'s embedded SQLite under a burst of concurrent writers.

50 clients start at once against the live server (`make run`'s gunicorn): job
submissions (token), token creations (page form), and reviewers deciding the same
applications, each twice (two reviewers, a double-submitted form). None may get a 5xx or
a reset connection, and of each application's deciders exactly one wins; the others get
a 409 that says why.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.utils import timezone

from portal.tests.embedded import EmbeddedStack

CSRF = "a" * 32  # a CSRF secret of our own: cookie and form field carry the same value
WRITERS = 50


@dataclass
class Call:
    kind: str
    method: str
    path: str
    body: bytes
    headers: dict[str, str]
    target: int | None = None  # the application a decision is about


@dataclass
class Outcome:
    call: Call
    status: int | None
    body: str
    error: str | None = None


def _page_headers(session: str) -> dict[str, str]:
    return {
        "Cookie": f"sessionid={session}; csrftoken={CSRF}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


def _calls(setup: dict) -> list[Call]:
    sessions = setup["sessions"]
    ends_on = (timezone.now() + timedelta(days=90)).date().isoformat()
    decisions = []
    for application in setup["applications"]:
        for reviewer in ("reviewer", "reviewer", "admin", "admin"):
            form = {
                "csrfmiddlewaretoken": CSRF,
                "size": "7b",
                "ends_on": ends_on,
                "confirmed": "1",
            }
            decisions.append(
                Call(
                    "decision",
                    "POST",
                    f"/review/applications/{application}/approve/",
                    urlencode(form).encode(),
                    _page_headers(sessions[reviewer]),
                    target=application,
                )
            )
    rest = WRITERS - len(decisions)
    jobs = [
        Call(
            "job",
            "POST",
            "/api/v1/jobs",
            json.dumps({"model": "demo", "prompt": f"Once upon a time {i}"}).encode(),
            {"Authorization": f"Bearer {setup['token']}", "Content-Type": "application/json"},
        )
        for i in range(rest // 2)
    ]
    tokens = [
        Call(
            "token",
            "POST",
            "/access/tokens/",
            urlencode(
                {
                    "csrfmiddlewaretoken": CSRF,
                    "name": f"laptop {i}",
                    "scopes": "download",
                    "expires_in_days": "30",
                }
            ).encode(),
            _page_headers(sessions["researcher"]),
        )
        for i in range(rest - len(jobs))
    ]
    calls = decisions + jobs + tokens
    assert len(calls) == WRITERS
    return calls


def _send(port: int, call: Call, start: threading.Barrier) -> Outcome:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        start.wait()
        connection.request(call.method, call.path, body=call.body, headers=call.headers)
        response = connection.getresponse()
        return Outcome(call, response.status, response.read().decode(errors="replace"))
    except OSError as exc:  # reset, refused, broken pipe, timeout
        return Outcome(call, None, "", error=repr(exc))
    finally:
        connection.close()


@pytest.mark.slow
def test_fifty_concurrent_writers_get_no_5xx_and_one_decision_wins(tmp_path):
    stack = EmbeddedStack(tmp_path, JOBS_MAX_ACTIVE_PER_USER="1000")
    try:
        setup = stack.prepare()
        stack.serve()
        calls = _calls(setup)
        start = threading.Barrier(len(calls))
        outcomes: list[Outcome] = [None] * len(calls)  # type: ignore[list-item]

        def run(i: int) -> None:
            outcomes[i] = _send(stack.port, calls[i], start)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        stack.stop()

    log = stack.output()
    broken = [o for o in outcomes if o.error or o.status is None or o.status >= 500]
    assert not broken, (
        [(o.call.kind, o.status, o.error, o.body[:300]) for o in broken],
        log[-3000:],
    )
    assert "database is locked" not in log

    by_kind = Counter((o.call.kind, o.status) for o in outcomes)
    jobs = [o for o in outcomes if o.call.kind == "job"]
    assert all(o.status == 201 for o in jobs), by_kind
    tokens = [o for o in outcomes if o.call.kind == "token"]
    assert all(o.status == 200 and "llp_" in o.body for o in tokens), by_kind

    for application in setup["applications"]:
        decided = [o for o in outcomes if o.call.target == application]
        won = [o for o in decided if o.status == 302]
        lost = [o for o in decided if o.status != 302]
        assert len(won) == 1, [(o.status, o.body[:200]) for o in decided]
        for loser in lost:
            assert loser.status == 409, (loser.status, loser.body[:500])
            assert 'class="error-message"' in loser.body
            message = loser.body.split('class="error-message">', 1)[1].split("<", 1)[0]
            assert message.strip(), loser.body[:500]
