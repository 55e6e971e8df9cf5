"""Riding out an outage: the client keeps trying with backoff for a time budget, and gives up
without a last useless sleep."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from portal_client import Client, PortalClientError
from portal_client.transfer import RetryBudget


class FakeClock:
    """time.monotonic and sleep for a budget, without waiting."""

    def __init__(self, monkeypatch):
        self.now = 1000.0
        self.slept: list[float] = []
        monkeypatch.setattr("portal_client.transfer.time.monotonic", lambda: self.now)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_backoff_doubles_to_eight_seconds_and_stops_before_the_budget(monkeypatch):
    """Eight seconds at most between tries: a store that is back is used again within 8 s
    (issue 14's recovery target is 15 s), at a few requests a minute while it is down."""
    clock = FakeClock(monkeypatch)
    budget = RetryBudget(seconds=100, sleep=clock.sleep)
    while budget.wait():
        pass
    assert clock.slept == [1, 2, 4] + [8] * 11  # 95 s; one more wait would end at 103 s
    assert clock.now - 1000 <= 100  # no sleep after the last try


def test_progress_renews_the_budget_and_retry_after_is_honoured(monkeypatch):
    clock = FakeClock(monkeypatch)
    budget = RetryBudget(seconds=10, sleep=clock.sleep)
    assert budget.wait() and budget.wait()  # 1 + 2 s
    budget.reset()
    assert budget.wait(at_least=5)
    assert clock.slept == [1, 2, 5]
    assert not budget.wait(at_least=20)  # would end after the budget: give up now


def test_a_cap_on_tries_is_kept_when_given(monkeypatch):
    clock = FakeClock(monkeypatch)
    budget = RetryBudget(seconds=1000, tries=3, sleep=clock.sleep)
    assert budget.wait() and budget.wait() and not budget.wait()
    assert clock.slept == [1, 2]


class _Flaky(BaseHTTPRequestHandler):
    down_for = 0  # requests answered 503 before the portal "comes back"
    seen = 0

    def do_GET(self):
        type(self).seen += 1
        ok = type(self).seen > type(self).down_for
        body = b'{"models": []}' if ok else b'{"error": {"code": "down", "message": "Back soon."}}'
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if not ok:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_portal():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Flaky.seen = 0
    yield server, _Flaky
    server.shutdown()
    server.server_close()


def test_the_client_waits_for_a_portal_that_comes_back(flaky_portal):
    server, handler = flaky_portal
    handler.down_for = 2
    client = Client(f"http://127.0.0.1:{server.server_port}", "llp_" + "x" * 40, retry_seconds=30)
    response = client._portal_get(f"{client.url}/api/v1/models")
    assert response.status_code == 200
    assert handler.seen == 3


def test_the_client_stops_when_the_budget_is_spent_and_says_why(flaky_portal):
    server, handler = flaky_portal
    handler.down_for = 10**6
    client = Client(f"http://127.0.0.1:{server.server_port}", "llp_" + "x" * 40, retry_seconds=2)
    response = client._portal_get(f"{client.url}/api/v1/models")
    assert response.status_code == 503  # the caller turns it into the portal's message
    assert handler.seen == 2  # tried, waited 1 s, tried; a 2 s wait would pass the budget
    with pytest.raises(PortalClientError, match="Back soon"):
        raise client._refusal(response)
