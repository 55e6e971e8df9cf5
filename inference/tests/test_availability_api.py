"""A size that cannot run now is told, not discovered: /v1/models and /api/v1/models say
whether it is ready and why not, and a completion for it answers 503 at once, creating
nothing (a client's retries cannot pile up queued jobs)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from catalog.models import ModelVariant, WeightFile
from catalog.tests.factories import file_row
from core import workers
from inference.models import GenerationJob

# Presence keys of these tests alone: they assert that no worker serves gpu.demo.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("own_presence")]


@pytest.fixture
def oai_client(api_client, generate_token):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {generate_token}")
    return api_client


def test_models_say_which_sizes_are_ready_and_why_not(oai_client, settings):
    """The cast's researcher may run demo and 7B; 7B has no files, demo no worker."""
    WeightFile.objects.filter(variant__slug="7b").delete()
    file_row("demo")
    models = {m["id"]: m for m in oai_client.get("/v1/models").json()["data"]}
    assert models["7b"]["ready"] is False
    assert "no published files yet" in models["7b"]["unavailable_reason"]
    assert models["demo"]["ready"] is False
    assert "No worker serves LLaMA demo now" in models["demo"]["unavailable_reason"]

    settings.WORKER_PRESENCE_SECONDS = 3600  # the key outlives a slow run
    workers.announce(node="api@test", queues=["gpu.demo"])
    try:
        demo = oai_client.get("/v1/models/demo").json()
        assert demo["ready"] is True and demo["unavailable_reason"] is None
        rest = {m["slug"]: m for m in oai_client.get("/api/v1/models").json()}
        assert rest["demo"]["ready"] is True
        assert (
            rest["7b"]["ready"] is False
            and "no published files" in (rest["7b"]["unavailable_reason"])
        )
    finally:
        workers.withdraw(node="api@test", queues=["gpu.demo"])


def test_a_completion_for_a_size_no_worker_serves_is_a_503_at_once(oai_client):
    file_row("demo")
    for _ in range(3):  # as a client's retries would
        response = oai_client.post(
            "/v1/completions", {"model": "demo", "prompt": "Hello", "max_tokens": 4}, format="json"
        )
        assert response.status_code == 503
        assert response["Retry-After"] == "30"
        error = response.json()["error"]
        assert error["code"] == "model_not_served"
        assert "No worker serves LLaMA demo now" in error["message"]
    assert GenerationJob.objects.count() == 0


def test_someone_without_access_learns_nothing_about_availability(api_client, outsider):
    from accounts.services import token_create

    key = token_create(user=outsider, name="t", scopes=["generate"])[1]
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    response = api_client.post(
        "/v1/completions", {"model": "7b", "prompt": "Hi", "max_tokens": 1}, format="json"
    )
    assert response.status_code == 403


def test_queued_jobs_of_a_size_nobody_serves_fail_with_the_reason(researcher, settings):
    from datetime import timedelta

    from inference.models import JobState
    from inference.services import job_submit, jobs_sweep_stuck

    file_row("demo")
    demo = ModelVariant.objects.get(slug="demo")
    job = job_submit(user=researcher, variant=demo, prompts=["Hello"], params={"max_new_tokens": 2})
    later = timezone.now() + timedelta(seconds=settings.JOBS_WORKER_WAIT_SECONDS + 1)

    settings.WORKER_PRESENCE_SECONDS = 3600
    workers.announce(node="sweep@test", queues=["gpu.demo"])
    try:
        jobs_sweep_stuck(now=later)  # served: it keeps waiting its turn
        job.refresh_from_db()
        assert job.state == JobState.QUEUED
    finally:
        workers.withdraw(node="sweep@test", queues=["gpu.demo"])

    result = jobs_sweep_stuck(now=later)
    job.refresh_from_db()
    assert result.expired == 1
    assert job.state == JobState.FAILED
    assert job.error.startswith("No worker serves LLaMA demo now (queue gpu.demo)")
    assert "waited 10 minutes" in job.error
