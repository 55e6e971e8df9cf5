"""A researcher's first visit in headless Chromium: sign-up, the verification link,
an application with a mistake corrected, the license, and the status page."""

from __future__ import annotations

import re

import pytest
from django.core import mail

from accounts import services
from accounts.models import Application, ApplicationState, LicenseAcceptance
from accounts.tests.factories import USE_CASE, ReviewerFactory
from catalog.models import ModelVariant
from portal.tests.browser import open_page

pytestmark = [
    pytest.mark.browser,
]


@pytest.fixture
def page(browser):
    page, errors = open_page(browser)
    yield page
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
