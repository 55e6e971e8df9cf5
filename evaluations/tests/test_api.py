"""The REST API and pages of evaluations: who may upload and run (the access and quota
matrix), errors as JSON naming the line, a finished evaluation's page with its charts beside
the card's published figures, and the per-item downloads."""

from __future__ import annotations

import csv
import io
import json

import pytest
from rest_framework.test import APIClient

from accounts.services import token_create
from core.errors import InvalidInput
from evaluations.models import Evaluation, EvaluationItem, EvaluationState, EvaluationTask
from evaluations.services import evaluation_advance, evaluation_start, task_upload
from evaluations.tests.conftest import fake_run

GOOD_LINE = '{"text": "The keeper lit the lamp."}\n'


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def upload(client, *, content=GOOD_LINE, kind="loglikelihood", shared=False):
    return client.post(
        "/api/v1/evaluations/tasks",
        {"name": "t", "kind": kind, "content": content, "shared": shared},
        format="json",
    )


@pytest.mark.parametrize(
    ("who", "shared", "status", "code"),
    [
        ("reviewer", True, 201, None),  # staff: any task, shared too
        ("researcher", False, 201, None),  # a grant for a size
        ("researcher", True, 403, "not_staff"),
        ("applicant", False, 403, "no_grant"),  # waiting for review
        ("revoked_researcher", False, 403, "no_grant"),
        ("outsider", False, 403, "no_grant"),
    ],
)
def test_who_may_upload(db, request, who, shared, status, code):
    response = upload(client_for(request.getfixturevalue(who)), shared=shared)
    assert response.status_code == status, response.content
    if code:
        assert response.json()["error"]["code"] == code


def test_a_researchers_quota_of_tasks(researcher, reviewer, settings):
    settings.EVAL_TASKS_PER_USER = 2
    client = client_for(researcher)
    assert [upload(client).status_code for _ in range(2)] == [201, 201]
    refused = upload(client)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "task_quota"
    assert upload(client_for(reviewer)).status_code == 201  # staff have no such limit
    task_id = EvaluationTask.objects.filter(owner=researcher).first().pk
    assert client.delete(f"/api/v1/evaluations/tasks/{task_id}").json()["deleted"] == task_id
    assert upload(client).status_code == 201


def test_a_bad_line_is_a_400_naming_it(researcher):
    content = GOOD_LINE + '{"txt": "oops"}\n' + GOOD_LINE + "not json\n"
    response = upload(client_for(researcher), content=content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_task_file"
    assert [(e["line"], e["field"]) for e in error["errors"]] == [(2, "text"), (4, None)]
    assert not EvaluationTask.objects.exists()


def test_a_file_upload_and_a_token(researcher, reviewer):
    token = token_create(user=researcher, name="nb", scopes=["generate"])[1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.post(
        "/api/v1/evaluations/tasks",
        {"name": "file", "kind": "loglikelihood", "file": io.BytesIO(GOOD_LINE.encode())},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    assert response.json()["item_count"] == 1
    download_only = token_create(user=researcher, name="dl", scopes=["download"])[1]
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {download_only}")
    assert client.get("/api/v1/evaluations/tasks").status_code == 403


def test_private_tasks_and_evaluations_are_not_found_for_others(researcher, outsider, reviewer):
    task = task_upload(user=researcher, name="mine", kind="loglikelihood", data=GOOD_LINE)
    assert client_for(outsider).get(f"/api/v1/evaluations/tasks/{task.pk}").status_code == 404
    assert client_for(reviewer).get(f"/api/v1/evaluations/tasks/{task.pk}").status_code == 200
    response = client_for(outsider).post(
        "/api/v1/evaluations", {"task": task.pk, "model": "demo"}, format="json"
    )
    assert response.status_code == 404


def test_running_needs_a_grant_for_that_size(researcher, published_demo, pairs_file):
    task = task_upload(user=researcher, name="pairs", kind="paired_sentences", data=pairs_file)
    client = client_for(researcher)
    refused = client.post("/api/v1/evaluations", {"task": task.pk, "model": "13B"}, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "no_grant"
    started = client.post("/api/v1/evaluations", {"task": task.pk, "model": "demo"}, format="json")
    assert started.status_code == 201, started.content
    body = started.json()
    assert body["state"] == "running" and body["items_total"] == 10


@pytest.fixture
def finished_pairs(researcher, published_demo, pairs_file, settings):
    settings.EVAL_CHUNK_CONTEXTS = 1
    task = task_upload(user=researcher, name="CrowS-Pairs demo", kind="paired_sentences",
                       data=pairs_file)  # fmt: skip
    evaluation = evaluation_start(user=researcher, task=task, variant=published_demo)
    for _ in range(20):
        evaluation = evaluation_advance(evaluation_id=evaluation.pk)
        if evaluation.state != EvaluationState.RUNNING:
            break
        for job in evaluation.chunks.filter(collected=False):
            fake_run(job.job)
    assert evaluation.state == EvaluationState.SUCCEEDED
    return evaluation


def test_the_results_page_sets_bias_beside_the_published_figures(
    client, researcher, finished_pairs
):
    client.force_login(researcher)
    page = client.get(finished_pairs.get_absolute_url())
    assert page.status_code == 200
    html = page.content.decode()
    assert "<svg" in html and "95%" in html
    # the card's 65B figure for the category next to this evaluation's
    assert "Gender, LLaMA 65B (published)" in html and "70.6" in html
    assert finished_pairs.task_sha256 in html
    status = client.get(f"/evaluations/{finished_pairs.pk}/status.json").json()
    assert status["state"] == "succeeded" and status["progress"] == 1.0


def test_per_item_downloads(client, researcher, outsider, finished_pairs):
    client.force_login(researcher)
    rows = list(csv.DictReader(io.StringIO(
        client.get(f"/evaluations/{finished_pairs.pk}/items.csv").content.decode())))  # fmt: skip
    assert len(rows) == 10 and {"line", "sent_more", "bias_type", "ll_more", "prefers_more"} <= set(
        rows[0]
    )
    stored = {i.index: i.scores for i in EvaluationItem.objects.filter(evaluation=finished_pairs)}
    assert all(
        float(r["ll_more"]) == pytest.approx(stored[int(r["index"])]["ll_more"]) for r in rows
    )
    document = json.loads(
        client_for(researcher).get(f"/api/v1/evaluations/{finished_pairs.pk}/items").content
    )
    assert len(document["items"]) == 10 and document["task_sha256"] == finished_pairs.task_sha256
    client.force_login(outsider)
    assert client.get(f"/evaluations/{finished_pairs.pk}/items.csv").status_code == 404


def test_cancel_and_resume_through_the_api(researcher, published_demo, pairs_file):
    task = task_upload(user=researcher, name="pairs", kind="paired_sentences", data=pairs_file)
    evaluation = evaluation_start(user=researcher, task=task, variant=published_demo)
    client = client_for(researcher)
    base = f"/api/v1/evaluations/{evaluation.pk}"
    assert client.post(f"{base}/resume").status_code == 409  # running: nothing to resume
    assert client.post(f"{base}/cancel").json()["state"] == "cancelled"
    assert client.post(f"{base}/cancel").status_code == 409
    assert client.post(f"{base}/resume").json()["state"] == "running"
    assert Evaluation.objects.get(pk=evaluation.pk).params["resumed"]


def test_a_lone_surrogate_is_a_400_not_a_crash(researcher):
    # The JSON escape \ud800 is a valid JSON string but no Unicode text: refused by the
    # field (API) or by the line check (any other caller), never a 500.
    body = json.dumps({"name": "t", "kind": "loglikelihood", "content": GOOD_LINE + "X\n"})
    body = body.replace("X", '{\\"text\\": \\"\\ud800\\"}')
    response = client_for(researcher).post(
        "/api/v1/evaluations/tasks", data=body.encode(), content_type="application/json"
    )
    assert response.status_code == 400
    assert "U+D800" in response.json()["error"]["message"]
    with pytest.raises(InvalidInput) as caught:
        task_upload(user=researcher, name="t", kind="loglikelihood", data=GOOD_LINE + "\ud800")
    assert caught.value.extra["errors"][0]["line"] == 2


def test_the_upload_form_lists_each_bad_line(client, researcher):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(researcher)
    bad = SimpleUploadedFile("t.jsonl", (GOOD_LINE + '{"text": 5}\n{"text": ""}\n').encode())
    page = client.post(
        "/evaluations/", {"name": "t", "kind": "loglikelihood", "file": bad, "description": ""}
    )
    assert page.status_code == 400
    html = page.content.decode()
    assert "Line 2, <code>text</code>: must be a string" in html
    assert "Line 3, <code>text</code>: must not be empty" in html
    good = SimpleUploadedFile("t.jsonl", GOOD_LINE.encode())
    page = client.post("/evaluations/", {"name": "ok", "kind": "loglikelihood", "file": good})
    assert page.status_code == 302 and EvaluationTask.objects.get().name == "ok"


def test_starting_from_the_page(client, researcher, published_demo, pairs_file):
    task = task_upload(user=researcher, name="pairs", kind="paired_sentences", data=pairs_file)
    client.force_login(researcher)
    index = client.get("/evaluations/")
    assert index.status_code == 200 and "pairs" in index.content.decode()
    started = client.post("/evaluations/start", {"task": task.pk, "model": "demo"})
    evaluation = Evaluation.objects.get()
    assert started.status_code == 302 and started["Location"] == evaluation.get_absolute_url()
    page = client.get(evaluation.get_absolute_url()).content.decode()
    assert "0 of 10 items scored" in page and "Cancel" in page


def test_the_list_page_and_api_take_the_same_queries_for_more_rows(
    client, researcher, published_demo, pairs_file, settings
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.EVAL_ACTIVE_PER_USER = 100
    client.force_login(researcher)
    api = client_for(researcher)

    def add(n):
        for _ in range(n):
            task = task_upload(user=researcher, name="p", kind="paired_sentences", data=pairs_file)
            evaluation_start(user=researcher, task=task, variant=published_demo)

    counts = []
    for n in (1, 4):
        add(n)
        with CaptureQueriesContext(connection) as page:
            assert client.get("/evaluations/").status_code == 200
        with CaptureQueriesContext(connection) as listing:
            assert len(api.get("/api/v1/evaluations").json()) in (1, 5)
            assert len(api.get("/api/v1/evaluations/tasks").json()) in (1, 5)
        counts.append((len(page), len(listing)))
    assert counts[0] == counts[1], counts


def test_the_site_header_links_signed_in_researchers_to_their_evaluations(client, researcher):
    assert 'href="/evaluations/"' not in client.get("/models/").content.decode()
    client.force_login(researcher)

    header = client.get("/models/").content.decode().split("</header>")[0]

    assert 'href="/evaluations/">Evaluations</a>' in header
    assert client.get("/evaluations/").status_code == 200
