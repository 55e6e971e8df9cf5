"""A queued job that cannot start says why: the job status API's `waiting_reason` and
`waiting_message`, the stream's `waiting` events, and the Python client, which tells them
while `generate` waits ("queued: the job broker is unreachable", "waiting for a 7B worker")."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from catalog.selectors import Availability
from catalog.tests.factories import file_row
from core import workers
from inference.models import GenerationJob, JobState
from inference.services import job_cancel, job_waiting, jobs_sweep_stuck

BROKER = "queued: the job broker is unreachable"


@pytest.fixture(autouse=True)
def _fresh_availability(monkeypatch):
    """These tests change who serves a size between requests: no reuse of an earlier look."""
    monkeypatch.setattr("inference.services._AVAILABILITY_SECONDS", 0.0)
    monkeypatch.setattr("inference.services._availability_seen", {})


@pytest.mark.django_db
def test_status_polls_share_one_availability_look_up_for_two_seconds(monkeypatch):
    from catalog.models import ModelVariant

    looks: list[str] = []
    monkeypatch.setattr("inference.services._AVAILABILITY_SECONDS", 2.0)
    monkeypatch.setattr(
        "inference.services.variant_availability",
        lambda v: looks.append(v.slug) or Availability(v.size, v.queue_name, True, 0),
    )
    clock = [100.0]
    monkeypatch.setattr("inference.services.time.monotonic", lambda: clock[0])
    job = GenerationJob(
        state=JobState.QUEUED, message_sent=True, variant=ModelVariant.objects.get(slug="7b")
    )
    for _ in range(5):
        assert job_waiting(job).reason == "no_worker"
    clock[0] += 2.5
    job_waiting(job)
    assert looks == ["7b", "7b"]


def _broker_down(**kwargs):
    raise ConnectionError("Redis is down")


@given(
    state=st.sampled_from(list(JobState.values)),
    sent=st.booleans(),
    files=st.booleans(),
    live=st.one_of(st.none(), st.integers(min_value=0, max_value=3)),
)
def test_the_waiting_reason_follows_what_blocks_the_job(state, sent, files, live):
    """Only a queued job waits; an unsent message comes first (nothing else matters until
    the broker takes it), then missing files, then an unknown or empty set of workers."""
    job = GenerationJob(state=state, message_sent=sent)
    availability = Availability(size="7B", queue="gpu.7b", files=files, workers=live)

    waiting = job_waiting(job, availability=availability)

    if state != JobState.QUEUED:
        expected = None
    elif not sent or (files and live is None):
        expected = "broker_unreachable"
    elif not files:
        expected = "no_files"
    elif live == 0:
        expected = "no_worker"
    else:
        expected = None
    assert (waiting.reason if waiting else None) == expected
    if waiting is not None:
        assert waiting.message.startswith("queued: ")
        if expected == "no_worker":
            assert "waiting for a 7B worker" in waiting.message


@pytest.mark.django_db
def test_the_status_api_says_why_a_queued_job_waits(
    api_client,
    generate_token,
    researcher,
    monkeypatch,
    django_capture_on_commit_callbacks,
    settings,
):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {generate_token}")
    file_row("7b")
    monkeypatch.setattr("inference.tasks.run_generation.apply_async", _broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        created = api_client.post("/api/v1/jobs", {"model": "7B", "prompt": "Hi"}, format="json")
    assert created.status_code == 201
    body = created.json()
    # (The test's transaction runs the send after the answer; served, it runs before.)
    detail = api_client.get(f"/api/v1/jobs/{body['id']}").json()
    assert detail["waiting_reason"] == "broker_unreachable"
    assert detail["waiting_message"].startswith(BROKER)

    monkeypatch.setattr("inference.tasks.run_generation.apply_async", lambda **kw: None)
    with django_capture_on_commit_callbacks(execute=True):
        jobs_sweep_stuck(now=timezone.now() + timedelta(seconds=3))
    detail = api_client.get(f"/api/v1/jobs/{body['id']}").json()
    assert detail["waiting_reason"] == "no_worker"  # sent now; nobody serves gpu.7b
    assert "waiting for a 7B worker" in detail["waiting_message"]
    [listed] = api_client.get("/api/v1/jobs").json()
    assert listed["waiting_reason"] == "no_worker"

    settings.WORKER_PRESENCE_SECONDS = 3600
    workers.announce(node="waiting@test", queues=["gpu.7b"])
    try:
        detail = api_client.get(f"/api/v1/jobs/{body['id']}").json()
        assert detail["waiting_reason"] is None and detail["waiting_message"] is None
    finally:
        workers.withdraw(node="waiting@test", queues=["gpu.7b"])
    job_cancel(job=GenerationJob.objects.get(pk=body["id"]))
    assert api_client.get(f"/api/v1/jobs/{body['id']}").json()["waiting_reason"] is None


def _generate_in_thread(client, model: str, told: list) -> tuple[threading.Thread, list]:
    outcome: list = []
    client.on_waiting = lambda job_id, message: told.append((job_id, message))

    def run() -> None:
        try:
            outcome.append(client.generate(model, "Hello", max_new_tokens=2))
        except Exception as exc:  # the test reads it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _wait_until(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {predicate}")
        time.sleep(0.05)


@pytest.mark.django_db(transaction=True)
def test_the_client_tells_a_broker_outage_while_it_waits_and_when_it_clears(
    live_server, generate_token, researcher, monkeypatch, settings
):
    from portal_client import Client
    from portal_client.jobs import JobCancelled

    file_row("demo")
    client = Client(live_server.url, generate_token, progress=False, retries=1)
    monkeypatch.setattr("inference.tasks.run_generation.apply_async", _broker_down)
    settings.WORKER_PRESENCE_SECONDS = 3600  # the key outlives a slow run
    workers.announce(node="waiting@test", queues=["gpu.demo"])  # a worker serves demo
    try:
        told: list = []
        thread, outcome = _generate_in_thread(client, "demo", told)
        _wait_until(lambda: told)
        job_id, message = told[0]
        assert message.startswith(BROKER)

        # The broker answers again: the sweep sends the message; the stream says so.
        monkeypatch.setattr("inference.tasks.run_generation.apply_async", lambda **kw: None)
        jobs_sweep_stuck(now=timezone.now() + timedelta(seconds=3))
        _wait_until(lambda: len(told) == 2)
        assert told[1] == (job_id, None)
        job_cancel(job=GenerationJob.objects.get(pk=job_id))
        thread.join(30)
    finally:
        workers.withdraw(node="waiting@test", queues=["gpu.demo"])
        client._session().close()
    [error] = outcome
    assert isinstance(error, JobCancelled)
    assert len(told) == 2  # each change told once, not at every poll


@pytest.mark.django_db(transaction=True)
def test_the_client_says_it_waits_for_a_worker_of_the_size(
    live_server, generate_token, researcher, caplog
):
    """The default `on_waiting` is a warning on the `portal_client` logger."""
    from portal_client import Client
    from portal_client.jobs import JobCancelled

    file_row("7b")
    client = Client(live_server.url, generate_token, progress=False, retries=1)
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(client.generate("7B", "Hello", max_new_tokens=2))
        except Exception as exc:
            outcome.append(exc)

    with caplog.at_level("WARNING", logger="portal_client"):
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        _wait_until(lambda: GenerationJob.objects.exists())
        _wait_until(lambda: "waiting for a 7B worker" in caplog.text)
        job_cancel(job=GenerationJob.objects.get())
        thread.join(30)
    client._session().close()
    assert isinstance(outcome[0], JobCancelled)
    assert caplog.text.count("waiting for a 7B worker") == 1
