"""The whole journey in headless Chromium, against a live portal with a real Celery worker,
Redis, PostgreSQL and the S3 server: a researcher signs up, verifies, applies (correcting a
mistake) and accepts the license; a reviewer approves the demo size and rejects 65B; the
researcher downloads a file, makes a token, generates in the playground and from the
`openai` and notebook clients; the reviewer revokes, and link, token and a queued job stop.

Each step leaves a screenshot in the folder the test prints; a failing step leaves the
page's HTML and screenshot (`portal.tests.browser.Journal`).
"""

from __future__ import annotations

import hashlib
import re
import time

import openai
import pytest
from django.core import mail

from accounts.models import Application, ApplicationState, Grant, GrantStatus
from accounts.tests.factories import CAST_PASSWORD, USE_CASE
from catalog.models import ModelVariant
from inference.models import GenerationJob, JobState
from portal.tests.browser import Journal, open_page, sign_in
from review.models import ReasonTemplate

pytestmark = [
    pytest.mark.browser,
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

WAIT_MS = 60_000  # two shared cores: generous waits, never assertions on time
EMAIL = "ada.lovelace@gmail.com"  # webmail: the demo size then waits for a reviewer
PASSWORD = "an-Unusual-passphrase-for-Ada-1843"
NAME = "Ada Lovelace"


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    from inference.llama.demo import build_demo_checkpoint

    directory = tmp_path_factory.mktemp("journey-checkpoint") / "demo"
    build_demo_checkpoint(directory, steps=20, seed=0)
    return directory


@pytest.fixture
def published_demo(s3, demo_checkpoint, transactional_db):
    from weights.services import variant_publish

    variant = ModelVariant.objects.get(slug="demo")
    variant_publish(variant=variant, directory=demo_checkpoint)
    return variant


@pytest.fixture
def worker(celery_worker, s3, published_demo, tmp_path):
    # One job at a time, each step slowed: the playground's text arrives visibly in
    # pieces, and a second job waits in the queue behind a long first one.
    return celery_worker(
        queues=["default", "gpu.demo"],
        s3_server=s3,
        env={
            "JOBS_MODEL_CACHE_DIR": str(tmp_path / "models"),
            "JOBS_STEP_DELAY_SECONDS": "0.1",
            "JOBS_MAX_BATCH_SIZE": "1",
            "JOBS_MAX_ATTEMPTS": "2",
        },
    )


def wait_for(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


def test_a_researcher_from_sign_up_to_revocation(
    live_server, browser, s3, worker, reviewer, tmp_path
):
    base = live_server.url
    journal = Journal(tmp_path / "journey")
    page, csp_errors = open_page(browser, timeout_ms=WAIT_MS)
    console, console_csp_errors = open_page(browser, timeout_ms=WAIT_MS)
    demo = ModelVariant.objects.get(slug="demo")
    big = ModelVariant.objects.get(slug="65b")

    with journal.step("home", page):
        page.goto(f"{base}/")

    with journal.step("sign up", page):
        page.goto(f"{base}/accounts/signup/")
        page.fill("input[name=email]", EMAIL)
        page.fill("input[name=password1]", PASSWORD)
        page.fill("input[name=password2]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        assert "verify" in page.content().lower()

    with journal.step("verify from the email", page):
        (message,) = mail.outbox
        assert message.to == [EMAIL]
        link = re.search(r"https?://\S+/accounts/confirm-email/\S+", message.body).group(0)
        page.goto(link)
        page.click("button[type=submit]")
        page.wait_for_load_state()

    with journal.step("apply with a mistake", page):
        page.goto(f"{base}/access/apply/")
        page.fill("#id_full_name", NAME)
        page.fill("#id_affiliation", "University of London")
        page.select_option("#id_organization_type", "academic")
        page.select_option("#id_country", "GB")
        page.fill("#id_position", "Research fellow")
        page.fill("#id_use_case", "Too short.")
        page.check(f"input[name=requested_variants][value='{demo.pk}']")
        page.check(f"input[name=requested_variants][value='{big.pk}']")
        page.click("button[value=submit]")
        page.wait_for_load_state()
        assert "at least" in page.inner_text("#errors-use_case")
        assert page.input_value("#id_affiliation") == "University of London"  # nothing lost

    with journal.step("apply corrected", page):
        page.fill("#id_use_case", USE_CASE)
        page.click("button[value=submit]")
        page.wait_for_url(f"{base}/access/")
        assert "Submitted, waiting for review" in page.inner_text("#application-state")

    with journal.step("accept the license", page):
        page.click("#license-step a")  # the status page's next step
        page.wait_for_url(f"{base}/access/license/")
        page.check("#id_agree")
        page.fill("#id_typed_name", NAME)
        page.click("text=Accept the license")
        page.wait_for_url(f"{base}/access/")
        assert page.locator("#license-step").count() == 0

    application = Application.objects.get(user__email=EMAIL)
    reject = ReasonTemplate.objects.get(kind="reject", title="Size not justified")
    with journal.step("reviewer opens the application", console):
        sign_in(console, base, reviewer.email, CAST_PASSWORD)
        console.goto(f"{base}/review/")
        console.locator("table.queue a", has_text=NAME).first.click()
        console.wait_for_url(f"**/review/applications/{application.pk}/")
        assert "Free webmail address" in console.inner_text("section.flags")

    with journal.step("reviewer approves demo", console):
        console.locator("tr[data-size='demo'] .approve-form button").click()
        console.wait_for_url("**/approve/")
        console.click("button[name=confirm]")
        console.wait_for_url(f"**/review/applications/{application.pk}/")
        assert "approved until" in console.content()

    with journal.step("reviewer rejects 65B with a template reason", console):
        form = console.locator("tr[data-size='65b'] .reject-form")
        form.locator("select[name=template]").select_option(str(reject.pk))
        assert form.locator("textarea[name=reason]").input_value() == reject.text
        form.locator("button[type=submit]").click()
        console.wait_for_url("**/reject/")
        console.click("button[name=confirm]")
        console.wait_for_url(f"**/review/applications/{application.pk}/")
        assert "LLaMA 65B rejected" in console.content()

    with journal.step("researcher sees both decisions", page):
        page.goto(f"{base}/access/")
        decisions = page.inner_text("table.decisions")
        assert "LLaMA demo" in decisions and "Approved" in decisions
        assert "LLaMA 65B" in decisions and "Rejected" in decisions
        assert reject.text in decisions
        assert page.locator("#blockers").count() == 0  # license accepted beforehand
        assert "Active" in page.inner_text("#grants")

    with journal.step("download a file through its link", page):
        page.goto(f"{base}/models/demo/")
        row = page.locator("table.files tbody tr", has_text="consolidated.00.pth")
        href = row.locator("a").get_attribute("href")
        assert href.startswith("/dl/")
        expected = row.locator("code.digest").first.inner_text()
        response = page.request.get(base + href)  # the session cookie; follows to S3
        assert response.ok, response.status
        assert response.url.startswith(s3.endpoint)
        assert hashlib.sha256(response.body()).hexdigest() == expected

    with journal.step("make a token", page):
        page.goto(f"{base}/access/tokens/")
        page.fill("#id_name", "notebook")
        page.check("input[name=scopes][value=download]")
        page.check("input[name=scopes][value=generate]")
        page.click("text=Create token")
        page.wait_for_load_state()
        token = page.inner_text("#new-token-key").strip()
        assert token.startswith("llp_")

    with journal.step("generate in the playground", page):
        page.goto(f"{base}/playground/")
        page.select_option("#pg-model", "demo")
        page.fill("#pg-prompt", "The model")
        page.fill("input[name=max_new_tokens]", "40")
        page.fill("input[name=seed]", "5")
        page.click("#pg-run")
        # Polled from here: wait_for_function evaluates a string, which the CSP forbids.
        deadline = time.monotonic() + 60
        partial = page.text_content("#pg-output")
        while partial == "The model" and time.monotonic() < deadline:
            page.wait_for_timeout(20)
            partial = page.text_content("#pg-output")
        assert partial != "The model", "no text streamed in"
        assert page.text_content("#pg-status") != "Done: succeeded"  # seen mid-stream
        page.wait_for_selector("#pg-status:has-text('Done: succeeded')")
        final = page.text_content("#pg-output")
        job = GenerationJob.objects.get(source="playground")
        assert final == "The model" + job.outputs[0]["text"]
        assert final.startswith(partial) and len(partial) < len(final)

    with journal.step("the same token in the openai and notebook clients", page):
        from portal_client import Client

        oai = openai.OpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0)
        notebook = Client(base, token, progress=False, retries=1)
        completion = oai.completions.create(
            model="demo", prompt="The model", max_tokens=8, temperature=0
        )
        assert (
            completion.choices[0].text
            == GenerationJob.objects.get(source="openai").outputs[0]["text"]
        )
        generation = notebook.generate("demo", "The model", max_new_tokens=8, temperature=0)
        assert generation.text == completion.choices[0].text  # greedy: the same text
        # A long job holds the one worker slot; the next one waits in the queue.
        running = notebook.submit("demo", "The model", max_new_tokens=200)
        queued = notebook.submit("demo", "A question", max_new_tokens=8)
        wait_for(
            lambda: GenerationJob.objects.get(pk=running["id"]).state == JobState.RUNNING,
            "the long job to start",
        )
        assert GenerationJob.objects.get(pk=queued["id"]).state == JobState.QUEUED
        page.goto(f"{base}/playground/")

    revoke = ReasonTemplate.objects.get(kind="revoke", title="Redistribution of the weights")
    grant = Grant.objects.get(user__email=EMAIL, variant=demo, status=GrantStatus.ACTIVE)
    with journal.step("reviewer revokes", console):
        console.goto(f"{base}/review/applications/{application.pk}/")
        row = console.locator(f"tr[data-grant='{grant.pk}']")
        row.locator("select[name=template]").select_option(str(revoke.pk))
        row.locator("button[type=submit]").click()
        console.wait_for_url(f"**/grants/{grant.pk}/revoke/")
        console.click("button[name=confirm]")
        console.wait_for_load_state()
        grant.refresh_from_db()
        assert grant.status == GrantStatus.REVOKED and grant.revoke_reason == revoke.text

    with journal.step("the link stops", page):
        response = page.goto(base + href)
        assert response.status == 403
        assert revoke.text in page.inner_text("main")

    with journal.step("the token stops", page):
        # A revoked token is no credential any more: 401, saying it was revoked.
        with pytest.raises(openai.AuthenticationError) as refused:
            oai.completions.create(model="demo", prompt="The model", max_tokens=8)
        # The reviewer's reason travels with the token (the stored reason is cut at 200).
        said = str(refused.value)
        assert "token was revoked (access to LLaMA demo revoked: " in said
        assert revoke.text[:60] in said
        from portal_client import PortalClientError

        with pytest.raises(PortalClientError) as refused_too:
            notebook.generate("demo", "The model", max_new_tokens=8)
        assert "revoked" in refused_too.value.message
        oai.close()
        notebook._session().close()

    with journal.step("the queued job stops", page):
        job = wait_for(
            lambda: GenerationJob.objects.filter(pk=queued["id"], state=JobState.CANCELLED).first(),
            "the queued job to be cancelled",
            timeout=10,
        )
        assert job.error == "Cancelled: your access to this model size was revoked."
        wait_for(
            lambda: GenerationJob.objects.get(pk=running["id"]).state == JobState.CANCELLED,
            "the running job to stop",
        )
        page.goto(f"{base}/playground/")
        badge = page.locator(f"tr[data-job='{queued['id']}'] .badge")
        assert badge.inner_text() == "Cancelled"
        assert "revoked" in badge.get_attribute("title")

    with journal.step("the status page says why", page):
        page.goto(f"{base}/access/")
        assert f"Your access to LLaMA demo was revoked: {revoke.text}" in page.inner_text(
            "#blockers"
        )

    assert Application.objects.get(pk=application.pk).state == ApplicationState.APPROVED
    assert csp_errors + console_csp_errors == []
