"""The REST API of jobs without a worker: submission rules, limits, ownership, cancel."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from accounts.services import token_create
from accounts.tests.factories import UserFactory, grant_access
from inference.models import GenerationJob, JobEvent, JobState


def _auth(client, key: str) -> None:
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")


def _submit(client, **body):
    return client.post("/api/v1/jobs", {"model": "demo", "prompt": "Hello", **body}, format="json")


@pytest.fixture
def researcher_client(api_client, generate_token):
    _auth(api_client, generate_token)
    return api_client


def test_it_queues_a_job_for_an_approved_researcher(researcher_client, researcher):
    response = _submit(researcher_client, max_new_tokens=8, temperature=0.5, stop=["\n"])

    assert response.status_code == 201, response.json()
    body = response.json()
    job = GenerationJob.objects.get(pk=body["id"])
    assert job.owner == researcher
    assert job.state == body["state"] == "queued"
    assert job.params["max_new_tokens"] == 8
    assert job.params["stop"] == ["\n"]
    assert isinstance(job.params["seed"], int)  # a concrete seed, so a rerun is identical
    assert job.token is not None and job.source == "api"
    assert response["Location"].endswith(f"/api/v1/jobs/{job.pk}")
    assert JobEvent.objects.filter(job=job, to_state="queued").count() == 1


def test_it_sends_the_queue_message_only_after_commit(
    researcher_client, django_capture_on_commit_callbacks, monkeypatch
):
    from inference import tasks

    sent = []
    monkeypatch.setattr(tasks.run_generation, "apply_async", lambda **kwargs: sent.append(kwargs))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _submit(researcher_client)
    assert response.status_code == 201
    assert sent == []
    for callback in callbacks:
        callback()
    assert len(sent) == 1
    assert sent[0]["queue"] == "gpu.demo"
    assert sent[0]["args"] == [response.json()["id"]]


def test_it_refuses_someone_without_a_grant_with_the_reason(api_client, outsider):
    _auth(api_client, token_create(user=outsider, name="x", scopes=["generate"])[1])

    response = _submit(api_client)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "no_grant"
    assert "/access/" in response.json()["error"]["message"]
    assert not GenerationJob.objects.exists()


def test_it_refuses_a_token_without_the_generate_scope(api_client, researcher):
    _auth(api_client, token_create(user=researcher, name="dl", scopes=["download"])[1])

    response = _submit(api_client)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "token_scope"


def test_it_asks_anonymous_callers_to_authenticate(api_client, db):
    assert _submit(api_client).status_code == 401
    assert api_client.get("/api/v1/jobs").status_code == 401


def test_it_answers_404_for_an_unknown_size(researcher_client):
    response = _submit(researcher_client, model="70b")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_size"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 5000}, "max_new_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"n": 17}, "n"),
    ],
)
def test_it_rejects_bad_parameters_naming_the_parameter(researcher_client, body, param):
    response = _submit(researcher_client, **body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_it_rejects_a_prompt_too_long_for_the_context_with_the_limit(
    researcher_client, published_demo
):
    response = _submit(researcher_client, prompt="word " * 300, max_new_tokens=16)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["limit"] == published_demo.context_length == 256
    assert "256-token context" in error["message"]
    assert error["prompt_tokens"] > 240  # counted with the size's own tokenizer


def test_a_prompt_that_fits_only_with_fewer_new_tokens_says_how_many(
    researcher_client, published_demo
):
    response = _submit(researcher_client, prompt="word " * 40, max_new_tokens=250)

    assert response.status_code == 400
    assert "lower max_new_tokens to" in response.json()["error"]["message"]


@override_settings(JOBS_MAX_ACTIVE_PER_USER=2)
def test_it_limits_concurrent_jobs_with_429_and_retry_after(researcher_client):
    assert _submit(researcher_client).status_code == 201
    assert _submit(researcher_client).status_code == 201

    response = _submit(researcher_client)

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "too_many_jobs"
    assert int(response["Retry-After"]) > 0


@override_settings(JOBS_TOKENS_PER_DAY=200)
def test_it_limits_tokens_per_day_with_the_time_until_enough_is_freed(
    researcher_client, researcher
):
    earlier = GenerationJob.objects.create(
        owner=researcher,
        variant_id=_demo_id(),
        prompts=["x"],
        params={"max_new_tokens": 10},
        state=JobState.SUCCEEDED,
        token_charge=150,
        created_at=timezone.now() - timedelta(hours=23),
    )

    response = _submit(researcher_client, max_new_tokens=100)

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "token_quota"
    retry_after = int(response["Retry-After"])
    # The earlier job leaves the 24-hour window in about an hour.
    assert 3500 <= retry_after <= 3601
    earlier.created_at -= timedelta(hours=2)
    earlier.save()
    assert _submit(researcher_client, max_new_tokens=100).status_code == 201


def test_a_job_bigger_than_the_whole_quota_is_a_400_not_a_429(researcher_client):
    with override_settings(JOBS_TOKENS_PER_DAY=50):
        response = _submit(researcher_client, max_new_tokens=100)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "quota_too_small"


def _demo_id() -> int:
    from catalog.models import ModelVariant

    return ModelVariant.objects.get(slug="demo").pk


def test_user_b_cannot_see_stream_or_cancel_user_a_jobs(researcher_client, api_client):
    job_id = _submit(researcher_client).json()["id"]
    other = UserFactory()
    grant_access(other, "demo")
    from rest_framework.test import APIClient

    b = APIClient()
    _auth(b, token_create(user=other, name="b", scopes=["generate"])[1])

    assert b.get(f"/api/v1/jobs/{job_id}").status_code == 404
    assert b.get(f"/api/v1/jobs/{job_id}/stream").status_code == 404
    assert b.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 404
    assert b.get("/api/v1/jobs").json() == []
    assert GenerationJob.objects.get(pk=job_id).state == "queued"
    assert b.get("/api/v1/jobs/not-a-uuid").status_code == 404


def test_the_owner_lists_gets_and_cancels_a_queued_job(researcher_client):
    job_id = _submit(researcher_client).json()["id"]

    listed = researcher_client.get("/api/v1/jobs").json()
    assert [j["id"] for j in listed] == [job_id]
    assert researcher_client.get(f"/api/v1/jobs/{job_id}").json()["state"] == "queued"

    response = researcher_client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    job = GenerationJob.objects.get(pk=job_id)
    assert job.token_charge == 0  # nothing ran, nothing counts against the quota

    again = researcher_client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert researcher_client.get("/api/v1/jobs?state=cancelled").json()[0]["id"] == job_id


def test_the_stream_of_a_finished_job_ends_with_the_job(researcher_client):
    job_id = _submit(researcher_client).json()["id"]
    researcher_client.post(f"/api/v1/jobs/{job_id}/cancel")

    response = researcher_client.get(
        f"/api/v1/jobs/{job_id}/stream", HTTP_ACCEPT="text/event-stream"
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    body = b"".join(response.streaming_content).decode()
    assert "event: end" in body
    assert '"state":"cancelled"' in body


def test_models_lists_only_the_sizes_the_user_may_run(researcher_client):
    slugs = [m["slug"] for m in researcher_client.get("/api/v1/models").json()]
    assert slugs == ["demo", "7b"]


def test_the_session_user_needs_a_csrf_token(researcher):
    from django.test import Client

    from accounts.tests.factories import CAST_PASSWORD

    browser = Client(enforce_csrf_checks=True)
    assert browser.login(email=researcher.email, password=CAST_PASSWORD)
    response = browser.post(
        "/api/v1/jobs", {"model": "demo", "prompt": "x"}, content_type="application/json"
    )
    assert response.status_code == 403
    browser.get("/playground/")
    token = browser.cookies["csrftoken"].value
    response = browser.post(
        "/api/v1/jobs",
        {"model": "demo", "prompt": "x"},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 201
    assert GenerationJob.objects.get().source == "playground"


def test_schema_and_interactive_docs_are_served_without_a_cdn(researcher_client, researcher):
    from django.test import Client

    from accounts.tests.factories import CAST_PASSWORD

    schema = researcher_client.get("/api/v1/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    assert "/api/v1/jobs/{job_id}/cancel" in text
    assert "personalAccessToken" in text
    browser = Client()
    browser.login(email=researcher.email, password=CAST_PASSWORD)
    docs = browser.get("/api/v1/docs/")
    assert docs.status_code == 200
    page = docs.content.decode()
    assert "cdn" not in page.lower()
    assert "drf_spectacular_sidecar/swagger-ui-dist" in page
