"""A reviewer's day in headless Chromium: filter the queue, open an application, approve one
size and reject another with a template reason; the applicant then sees both decisions."""

from __future__ import annotations

import pytest

from accounts.tests.factories import CAST_PASSWORD, UserFactory
from portal.tests.browser import open_page, sign_in
from review.models import ReasonTemplate
from review.tests.helpers import submit

pytestmark = [
    pytest.mark.browser,
    # live_server commits for real; the root conftest puts the migrations' rows back.
    pytest.mark.django_db(transaction=True),
]


def test_a_reviewer_decides_two_sizes_and_the_applicant_sees_both(live_server, browser, reviewer):
    base = live_server.url
    applicant = UserFactory(email="grace@cs.ox.ac.uk", first_name="Grace", last_name="Hopper")
    application = submit(applicant, "7b", "13b", full_name="Grace Hopper")
    submit(None, "7b", organization_type="government", full_name="Someone Else")
    template = ReasonTemplate.objects.get(kind="reject", title="Size not justified")

    page, csp_errors = open_page(browser)
    sign_in(page, base, reviewer.email, CAST_PASSWORD)
    page.goto(f"{base}/review/")
    assert page.locator("table.queue tbody tr").count() == 2

    # Filter: academic applications asking for 13B; the filters stay in the URL.
    page.select_option("select[name=organization_type]", "academic")
    page.select_option("select[name=size]", "13b")
    page.click("#queue-filters button[type=submit]")
    page.wait_for_url("**organization_type=academic**")
    assert "size=13b" in page.url
    rows = page.locator("table.queue tbody tr")
    assert rows.count() == 1
    rows.first.locator("a", has_text="Grace Hopper").click()
    page.wait_for_url(f"**/review/applications/{application.pk}/")

    # Approve 7B, through the confirmation page.
    page.locator("tr[data-size='7b'] .approve-form button").click()
    page.wait_for_url("**/approve/")
    assert "Confirm: Approve LLaMA 7B" in page.content()
    page.click("button[name=confirm]")
    page.wait_for_url(f"**/review/applications/{application.pk}/")
    assert "approved until" in page.content()

    # Reject 13B: picking the template fills the reason (review.js), then confirm.
    form = page.locator("tr[data-size='13b'] .reject-form")
    form.locator("select[name=template]").select_option(str(template.pk))
    assert form.locator("textarea[name=reason]").input_value() == template.text
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/reject/")
    assert page.locator("textarea[name=reason]").input_value() == template.text
    page.click("button[name=confirm]")
    page.wait_for_url(f"**/review/applications/{application.pk}/")
    assert "LLaMA 13B rejected" in page.content()

    # The applicant's status page shows both decisions and the reason.
    own, own_csp_errors = open_page(browser)
    sign_in(own, base, applicant.email, CAST_PASSWORD)
    own.goto(f"{base}/access/")
    decisions = own.locator("table.decisions")
    text = decisions.inner_text()
    assert "LLaMA 7B" in text and "Approved" in text
    assert "LLaMA 13B" in text and "Rejected" in text
    assert template.text in text
    assert not csp_errors + own_csp_errors, csp_errors + own_csp_errors
