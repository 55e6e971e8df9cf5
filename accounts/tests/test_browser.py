"""A researcher's first visit in headless Chromium: sign-up, the verification link,
an application with a mistake corrected, the license, and the status page."""

from __future__ import annotations

import re
import shutil

import pytest
from django.core import mail
from django.db import connections

from accounts import services
from accounts.models import Application, ApplicationState, LicenseAcceptance
from accounts.tests.factories import USE_CASE, ReviewerFactory
from weights.models import ModelVariant

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which("chromium"), reason="needs /usr/bin/chromium"),
]


@pytest.fixture
def page(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls
    # are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        # 400s of forms with errors are expected; a blocked script or style is not.
        page.on(
            "console",
            lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
        )
        yield page
        browser.close()
        # ORM calls made while Playwright's loop runs get their own connection (asgiref
        # context): close it, or the test database cannot be dropped.
        connections.close_all()
        assert not errors, f"CSP violations: {errors}"


def test_a_researcher_signs_up_applies_accepts_the_license_and_sees_their_status(live_server, page):
    base = live_server.url
    email, password = "grace@uni.example.edu", "a-Long-and-unusual-passphrase-7"

    # Sign up.
    page.goto(f"{base}/accounts/signup/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password1]", password)
    page.fill("input[name=password2]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "verify" in page.content().lower()

    # The verification link from the email.
    (message,) = mail.outbox
    link = re.search(r"https?://\S+/accounts/confirm-email/\S+", message.body).group(0)
    page.goto(link)
    page.click("button[type=submit]")
    page.wait_for_load_state()

    # Apply, with a mistyped ORCID iD and a short use case.
    page.goto(f"{base}/access/apply/")
    page.fill("#id_full_name", "Grace Hopper")
    page.fill("#id_affiliation", "University of Examples")
    page.select_option("#id_organization_type", "academic")
    page.select_option("#id_country", "US")
    page.fill("#id_position", "Professor")
    page.fill("#id_orcid", "0000-0002-1825-0098")
    page.fill("#id_use_case", "Too short.")
    seven = ModelVariant.objects.get(slug="7b")
    page.check(f"input[name=requested_variants][value='{seven.pk}']")
    page.click("button[value=submit]")
    page.wait_for_load_state()
    assert "check digit" in page.inner_text("#errors-orcid")
    assert "at least" in page.inner_text("#errors-use_case")
    # Nothing typed was lost.
    assert page.input_value("#id_affiliation") == "University of Examples"
    assert page.input_value("#id_full_name") == "Grace Hopper"
    assert page.is_checked(f"input[name=requested_variants][value='{seven.pk}']")

    page.fill("#id_orcid", "0000-0002-1825-0097")
    page.fill("#id_use_case", USE_CASE)
    page.click("button[value=submit]")
    page.wait_for_url(f"{base}/access/")
    assert "Submitted, waiting for review" in page.inner_text("#application-state")
    assert "Position in the review queue" in page.inner_text("#queue")

    # A reviewer approves (the console is another app; its service is this one).
    application = Application.objects.get(user__email=email)
    services.application_approve(
        application=application, reviewer=ReviewerFactory(), variants=[seven]
    )
    page.reload()
    assert "Decided: approved" in page.inner_text("#application-state")
    assert "license" in page.inner_text("#blockers").lower()

    # The license: tick and type the full name.
    page.goto(f"{base}/access/license/")
    assert "NONCOMMERCIAL" in page.inner_text("#license-text")
    page.fill("#id_typed_name", "Grace Hopper")
    page.click("text=Accept the license")
    page.wait_for_load_state()
    assert "Tick the box" in page.content()
    page.check("#id_agree")
    page.fill("#id_typed_name", "Grace Hopper")
    page.click("text=Accept the license")
    page.wait_for_url(f"{base}/access/")

    # The status page: approved, a live 7B grant, nothing blocking.
    assert page.locator("#blockers").count() == 0
    grants = page.inner_text("#grants")
    assert "LLaMA 7B" in grants and "Active" in grants
    timeline = page.inner_text("#timeline")
    assert "Application received." in timeline and "approved until" in timeline
    acceptance = LicenseAcceptance.objects.get(user__email=email)
    assert acceptance.typed_name == "Grace Hopper"
    assert acceptance.user_agent  # the browser's
    assert Application.objects.get(user__email=email).state == ApplicationState.APPROVED
