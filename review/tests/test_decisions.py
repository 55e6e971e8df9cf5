"""The console's decisions are declared once (`review.views.DECISIONS`) and served by one view.
A form that does not validate shows the confirmation page again, with its errors and with what
the reviewer chose (the size, the selected applications) kept, never a bare error page."""

from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.urls import resolve, reverse
from django.utils import timezone

from accounts.models import ApplicationState, GrantStatus, SizeOutcome
from review import views
from review.models import Claim, ReasonTemplate
from review.tests.helpers import submit

pytestmark = pytest.mark.django_db


class _ConfirmPage(HTMLParser):
    """What a browser would send back from the confirmation page's form."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str]] = []
        self.action = None
        self._textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and "confirm" in (attrs.get("class") or ""):
            self.action = attrs.get("action")
        elif tag == "input" and attrs.get("name") and attrs.get("type") != "checkbox":
            self.fields.append((attrs["name"], attrs.get("value") or ""))
        elif tag == "textarea":
            self._textarea = attrs["name"]
            self.fields.append((attrs["name"], ""))

    def handle_data(self, data):
        if self._textarea is not None:
            name, text = self.fields.pop()
            self.fields.append((name, text + data.lstrip("\n")))

    def handle_endtag(self, tag):
        if tag == "textarea":
            self._textarea = None


def confirm_page(response) -> _ConfirmPage:
    page = _ConfirmPage()
    page.feed(response.content.decode())
    return page


def resend(client, page: _ConfirmPage, **changes):
    """Post the confirmation page's form as it stands, with `changes` typed in."""
    data: dict[str, list[str]] = {}
    for name, value in page.fields:
        if name != "csrfmiddlewaretoken":
            data.setdefault(name, []).append(value)
    for name, value in changes.items():
        data[name] = [value]
    return client.post(page.action, data)


def url(name, application):
    return reverse(f"review:{name}", kwargs={"application_id": application.pk})


def outcomes(application):
    return {d.variant.slug: d.outcome for d in application.decisions.select_related("variant")}


def in_days(n: int) -> str:
    return (timezone.localdate() + timedelta(days=n)).isoformat()


def test_every_decision_is_served_by_the_one_view(researcher):
    application = submit(None, "7b")
    grant = researcher.grants.first()
    kw = {"application_id": application.pk}
    urls = {
        "approve": reverse("review:approve", kwargs=kw),
        "reject": reverse("review:reject", kwargs=kw),
        "return": reverse("review:return", kwargs=kw),
        "take_over": reverse("review:take_over", kwargs=kw),
        "revoke": reverse("review:revoke", kwargs={"grant_id": grant.pk}),
        "bulk": reverse("review:bulk"),
    }
    for name, path in urls.items():
        match = resolve(path)
        assert match.func.__wrapped__ is views.decide.__wrapped__, name
        assert match.kwargs["decision"] == name
    assert set(views.DECISIONS) == {
        "approve", "reject", "return", "take_over", "revoke", "bulk_approve", "bulk_reject",
    }  # fmt: skip


def test_an_invalid_approval_shows_the_confirmation_again_with_its_error(reviewer_client):
    application = submit(None, "7b", "13b")
    past = (timezone.localdate() - timedelta(days=1)).isoformat()
    response = reviewer_client.post(
        url("approve", application), {"size": "13b", "ends_on": past, "note": "Lab checked."}
    )
    assert response.status_code == 400
    content = response.content.decode()
    assert "Confirm: Approve LLaMA 13B" in content
    assert "The end date must be after today." in content
    page = confirm_page(response)
    # The size chosen on the detail page and the note typed there are kept.
    assert ("size", "13b") in page.fields and ("note", "Lab checked.") in page.fields
    assert outcomes(application) == {"7b": "pending", "13b": "pending"}

    response = resend(reviewer_client, page, ends_on=in_days(90))
    assert response.status_code == 302
    assert outcomes(application) == {"7b": "pending", "13b": "approved"}
    event = application.events.filter(variant__slug="13b").last()
    assert event.internal_note == "Lab checked."


def test_a_rejection_without_a_reason_asks_again_for_the_same_size(reviewer_client):
    application = submit(None, "7b", "65b")
    response = reviewer_client.post(
        url("reject", application), {"size": "65b", "reason": " ", "confirmed": "1"}
    )
    assert response.status_code == 400
    assert b"Confirm: Reject LLaMA 65B" in response.content
    assert b"Write a reason or pick a template" in response.content
    page = confirm_page(response)
    assert ("size", "65b") in page.fields
    assert outcomes(application) == {"7b": "pending", "65b": "pending"}

    response = resend(reviewer_client, page, reason="65B is not needed for this study.")
    assert response.status_code == 302
    assert outcomes(application) == {"7b": "pending", "65b": "rejected"}


def test_an_invalid_return_and_revocation_and_take_over_ask_again(
    client, reviewer, second_reviewer, researcher
):
    from review.services import claim_take

    application = submit(None, "7b")
    client.force_login(reviewer)
    response = client.post(url("return", application), {"message": "", "note": "Odd."})
    assert response.status_code == 400 and b"Confirm: Return for changes" in response.content
    response = resend(client, confirm_page(response), message="Name your supervisor.")
    assert response.status_code == 302
    application.refresh_from_db()
    assert application.state == ApplicationState.RETURNED

    grant = researcher.grants.get(variant__slug="7b")
    target = reverse("review:revoke", kwargs={"grant_id": grant.pk})
    response = client.post(target, {"reason": "", "confirmed": "1"})
    assert response.status_code == 400 and b"Write a reason" in response.content
    grant.refresh_from_db()
    assert grant.status == GrantStatus.ACTIVE
    assert resend(client, confirm_page(response), reason="Leaked.").status_code == 302
    grant.refresh_from_db()
    assert grant.status == GrantStatus.REVOKED

    other = submit(None, "7b")
    claim_take(application=other, reviewer=reviewer)
    client.force_login(second_reviewer)
    response = client.post(url("take_over", other), {"note": ""})
    assert response.status_code == 400 and b"Confirm: Take over" in response.content
    assert resend(client, confirm_page(response), note="Rita is away.").status_code == 302
    assert Claim.objects.get(application=other).reviewer == second_reviewer


def test_a_bulk_rejection_without_a_reason_keeps_the_selection(reviewer_client, reviewer):
    apps = [submit(None, "7b"), submit(None, "13b", "65b")]
    left_alone = submit(None, "7b")
    data = {
        "action": "reject",
        "ids": [a.pk for a in apps],
        "reason": "",
        "query": "size=7b&order=newest",
    }
    response = reviewer_client.post(reverse("review:bulk"), data)
    assert response.status_code == 400
    content = response.content.decode()
    assert "Confirm: Bulk rejection" in content
    assert "Write a reason or pick a template" in content
    for application in apps:
        assert f"#{application.pk} {application.full_name}" in content
    page = confirm_page(response)
    assert sorted(int(v) for n, v in page.fields if n == "ids") == sorted(a.pk for a in apps)
    assert ("action", "reject") in page.fields
    assert all(a.state == ApplicationState.SUBMITTED for a in apps)

    response = resend(reviewer_client, page, reason="Not a research use.")
    assert response.status_code == 302
    assert response.url == reverse("review:queue") + "?size=7b&order=newest"
    for application in apps:
        application.refresh_from_db()
        assert application.state == ApplicationState.REJECTED
    assert outcomes(left_alone) == {"7b": "pending"}


def test_a_bulk_approval_with_a_past_date_can_be_put_right_on_the_page(reviewer_client):
    apps = [submit(None, "7b"), submit(None, "13b")]
    past = (timezone.localdate() - timedelta(days=3)).isoformat()
    response = reviewer_client.post(
        reverse("review:bulk"),
        {"action": "approve", "ids": [a.pk for a in apps], "ends_on": past, "confirmed": "1"},
    )
    assert response.status_code == 400
    assert b"Confirm: Bulk approval" in response.content
    assert b"The end date must be after today." in response.content
    page = confirm_page(response)
    assert sorted(int(v) for n, v in page.fields if n == "ids") == sorted(a.pk for a in apps)
    assert [outcomes(a) for a in apps] == [{"7b": "pending"}, {"13b": "pending"}]

    response = resend(reviewer_client, page, ends_on=in_days(60))
    assert response.status_code == 302
    assert [outcomes(a) for a in apps] == [{"7b": "approved"}, {"13b": "approved"}]


def test_a_bulk_post_with_nothing_selected_asks_again_instead_of_an_error_page(reviewer_client):
    response = reviewer_client.post(reverse("review:bulk"), {"action": "reject", "reason": "x"})
    assert response.status_code == 400
    assert b"Confirm: Bulk rejection" in response.content
    assert b"Applications: This field is required." in response.content


def test_the_confirmation_says_which_approval_of_a_two_reviewer_size_it_is(
    client, reviewer, second_reviewer
):
    application = submit(None, "33b")
    data = {"size": "33b", "ends_on": in_days(30)}
    client.force_login(reviewer)
    first = client.post(url("approve", application), data).content.decode()
    assert "Confirm: Approve LLaMA 33B</h1>" in first
    assert "yours is the first approval" in first and "second approval" not in first
    client.post(url("approve", application), {**data, "confirmed": "1"})
    assert outcomes(application) == {"33b": SizeOutcome.AWAITING_SECOND}

    client.force_login(second_reviewer)
    second = client.post(url("approve", application), data).content.decode()
    assert "Confirm: Approve LLaMA 33B (second approval)" in second
    assert f"This is the second approval: {reviewer.display_name} gave the first" in second
    assert "yours is the first approval" not in second


def test_a_template_reason_is_written_out_for_the_reviewer_to_edit(reviewer_client):
    application = submit(None, "7b")
    template = ReasonTemplate.objects.get(kind="reject", title="Size not justified")
    response = reviewer_client.post(
        url("reject", application), {"size": "7b", "template": template.pk, "reason": ""}
    )
    assert response.status_code == 200
    assert ("reason", template.text) in confirm_page(response).fields


def test_the_approve_step_says_when_a_size_cannot_be_used_yet(reviewer_client):
    from catalog.models import WeightFile

    WeightFile.objects.filter(variant__slug="7b").delete()
    application = submit(None, "7b")
    response = reviewer_client.post(url("approve", application), {"size": "7b"})
    content = response.content.decode()
    assert "Confirm: Approve LLaMA 7B" in content
    assert "Note: LLaMA 7B has no published files yet, so no worker can run it." in content
