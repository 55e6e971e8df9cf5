"""The playground page: who may see it, what it lists, and in headless Chromium, a prompt
whose output streams in token by token, then lands in the history with its timings."""

from __future__ import annotations

import pytest

from accounts.tests.factories import CAST_PASSWORD
from catalog.models import ModelVariant
from inference.models import GenerationJob
from inference.services import job_submit
from portal.tests.browser import open_page, sign_in


def test_the_playground_needs_a_signed_in_user(client, db):
    response = client.get("/playground/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_lists_the_sizes_and_the_history_with_a_constant_number_of_queries(
    client, researcher, django_assert_max_num_queries
):
    demo = ModelVariant.objects.get(slug="demo")
    for i in range(3):
        job_submit(user=researcher, variant=demo, prompts=[f"prompt {i}"], params={})
    client.login(email=researcher.email, password=CAST_PASSWORD)

    with django_assert_max_num_queries(25):
        response = client.get("/playground/")

    page = response.content.decode()
    assert response.status_code == 200
    assert '<option value="demo"' in page and '<option value="7b"' in page
    assert page.count("data-job=") == 3
    assert "<script>" not in page  # the CSP allows our own files only
    assert "inference/playground.js" in page


def test_someone_without_access_is_told_where_to_apply(client, outsider):
    client.login(email=outsider.email, password=CAST_PASSWORD)

    page = client.get("/playground/").content.decode()

    assert "You cannot run any model yet" in page
    assert 'id="playground-form"' not in page


@pytest.mark.browser
@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_researcher_watches_the_output_stream_in(
    live_server, jobs_worker, published_demo, researcher, browser, tmp_path
):
    page, csp_errors = open_page(browser, timeout_ms=20_000)
    sign_in(page, live_server.url, researcher.email, CAST_PASSWORD)
    page.goto(f"{live_server.url}/playground/")
    page.fill("#pg-prompt", "The model")
    page.fill("input[name=max_new_tokens]", "60")
    page.fill("input[name=seed]", "5")

    page.click("#pg-run")
    # The worker slows every step to 30 ms: text appears before the job ends.
    # (polled from here: wait_for_function evaluates a string, which the CSP forbids)
    partial = page.text_content("#pg-output")
    while partial == "The model":
        page.wait_for_timeout(20)
        partial = page.text_content("#pg-output")
    assert page.text_content("#pg-status") != "Done: succeeded"
    page.wait_for_selector("#pg-status:has-text('Done: succeeded')")
    final = page.text_content("#pg-output")
    row = page.text_content("#pg-history tbody tr:first-child")
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)

    job = GenerationJob.objects.get()
    assert job.source == "playground" and job.params["seed"] == 5
    assert final == "The model" + job.outputs[0]["text"]
    assert final.startswith(partial) and len(partial) < len(final)
    assert "succeeded" in row and "demo" in row
    assert csp_errors == []


@pytest.mark.browser
@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_history_follows_a_job_submitted_elsewhere_without_a_reload(
    live_server, jobs_worker, published_demo, researcher, browser
):
    page, csp_errors = open_page(browser, timeout_ms=30_000)
    sign_in(page, live_server.url, researcher.email, CAST_PASSWORD)
    # Submitted from a notebook, say, before the page is opened: it shows as queued/running.
    job = job_submit(
        user=researcher,
        variant=published_demo,
        prompts=["Elsewhere"],
        params={"max_new_tokens": 60},  # about 2 s at the worker's 30 ms a step
    )
    page.goto(f"{live_server.url}/playground/")
    row = f"#pg-history tr[data-job='{job.pk}']"
    assert page.get_attribute(row, "data-active") == "1"  # still queued or running
    page.wait_for_selector(f"{row}[data-active='0']", timeout=60_000)  # no reload in between
    job.refresh_from_db()
    assert job.state == "succeeded"
    cells = page.locator(f"{row} td").all_text_contents()
    assert cells[3] == "succeeded" and cells[7] == str(job.completion_tokens)
    assert csp_errors == []


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_interactive_api_page_renders_under_the_csp(live_server, researcher, browser):
    page, csp_errors = open_page(browser, timeout_ms=20_000)
    requests_seen: list[str] = []
    page.on("request", lambda r: requests_seen.append(r.url))
    sign_in(page, live_server.url, researcher.email, CAST_PASSWORD)
    page.goto(f"{live_server.url}/api/v1/docs/")
    page.get_by_text("/api/v1/jobs/{job_id}/cancel").first.wait_for()

    assert all(url.startswith(live_server.url) for url in requests_seen)  # no CDN
    assert csp_errors == [], csp_errors


def test_the_web_process_never_imports_torch(tmp_path):
    """Every URL module and view of the portal loads, and torch is not among the modules."""
    import subprocess
    import sys

    code = (
        "import sys, django; django.setup();"
        "from django.urls import get_resolver; get_resolver().url_patterns;"
        "import inference.api, inference.openai_api, inference.views, inference.tasks;"
        "import inference.services, inference.tokens, inference.streams;"
        "print('torch' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
