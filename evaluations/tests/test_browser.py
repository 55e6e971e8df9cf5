"""The evaluation page in headless Chromium: its progress bar follows the items as they are
scored (polling the status endpoint, no reload), the page turns into its results when the
evaluation ends, with no CSP error and no serious accessibility violation."""

from __future__ import annotations

import time

import pytest
from axe_playwright_python.sync_playwright import Axe

from accounts.tests.factories import CAST_PASSWORD
from evaluations.models import EvaluationState
from evaluations.services import evaluation_advance, evaluation_start, task_upload
from evaluations.tests.conftest import fake_run
from portal.tests.browser import open_page, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_progress_bar_follows_the_items_then_the_results_show(
    live_server, browser, researcher, published_demo, pairs_file, settings, tmp_path, monkeypatch
):
    # This test finishes the jobs itself (fake_run): no queue message may reach a demo
    # worker that an earlier test of the session left running.
    monkeypatch.setattr("inference.services._enqueue", lambda job: None)
    settings.EVAL_CHUNK_CONTEXTS = 1
    settings.EVAL_MAX_OUTSTANDING_JOBS = 10
    task = task_upload(user=researcher, name="pairs", kind="paired_sentences", data=pairs_file)
    evaluation = evaluation_start(user=researcher, task=task, variant=published_demo)
    evaluation = evaluation_advance(evaluation_id=evaluation.pk)
    jobs = [c.job for c in evaluation.chunks.order_by("created_at")]
    assert len(jobs) > 1

    page, csp_errors = open_page(browser, timeout_ms=60_000)
    sign_in(page, live_server.url, researcher.email, CAST_PASSWORD)
    page.goto(live_server.url + evaluation.get_absolute_url())
    assert page.locator("progress").get_attribute("value") == "0"

    fake_run(jobs[0])
    done = evaluation_advance(evaluation_id=evaluation.pk).items_done
    assert 0 < done < 10
    # (the page's CSP forbids wait_for_function's eval: poll from here)
    deadline = time.monotonic() + 15
    while page.locator("progress").get_attribute("value") != str(done):
        assert time.monotonic() < deadline, "the progress bar did not move"
        time.sleep(0.2)
    assert f"{done} of 10 items scored" in page.text_content("[data-eval-text]")

    for job in jobs[1:]:
        fake_run(job)
    assert evaluation_advance(evaluation_id=evaluation.pk).state == EvaluationState.SUCCEEDED
    page.wait_for_selector("text=State: Finished", timeout=15_000)  # it reloaded itself
    assert page.locator(".eval-charts svg").count() == 1
    published = page.locator(".eval-charts svg text", has_text="Gender, LLaMA 65B (published)")
    assert published.count() == 1

    violations = Axe().run(page).response["violations"]
    blocking = [v["id"] for v in violations if v["impact"] in ("serious", "critical")]
    assert not blocking, blocking
    assert not csp_errors
    page.screenshot(path=str(tmp_path / "evaluation.png"), full_page=True)
