"""Every action is confirmed, goes through the accounts services, and lands in the audit log."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import (
    AccessToken,
    ApplicationState,
    AuditEntry,
    Grant,
    GrantStatus,
    SizeOutcome,
)
from accounts.services import token_create
from review.models import InternalNote, ReasonTemplate
from review.tests.helpers import submit

pytestmark = pytest.mark.django_db


def outcomes(application):
    return {d.variant.slug: d.outcome for d in application.decisions.select_related("variant")}


def audit_actions(actor):
    return list(AuditEntry.objects.filter(actor=actor).values_list("action", flat=True))


def url(name, application):
    return reverse(f"review:{name}", kwargs={"application_id": application.pk})


def test_approving_one_size_is_confirmed_then_done_with_the_end_date(reviewer_client, reviewer):
    application = submit(None, "7b", "13b")
    ends = timezone.localdate() + timedelta(days=100)
    data = {"size": "7b", "ends_on": ends.isoformat()}
    response = reviewer_client.post(url("approve", application), data)
    assert response.status_code == 200
    assert b"Confirm: Approve LLaMA 7B" in response.content
    assert outcomes(application)["7b"] == SizeOutcome.PENDING

    response = reviewer_client.post(url("approve", application), {**data, "confirmed": "1"})
    assert response.status_code == 302
    assert outcomes(application) == {"7b": "approved", "13b": "pending"}
    grant = Grant.objects.get(application=application)
    assert grant.ends_at.date() == ends and grant.status == GrantStatus.ACTIVE
    assert "size.approved" in audit_actions(reviewer)


def test_rejecting_with_a_template_reason_the_reviewer_edits(reviewer_client, reviewer):
    application = submit(None, "7b", "65b")
    template = ReasonTemplate.objects.get(kind="reject", title="Size not justified")
    data = {"size": "65b", "template": template.pk, "reason": ""}
    response = reviewer_client.post(url("reject", application), data)
    # The confirmation page shows the template's text in an editable box.
    assert response.status_code == 200
    assert template.text.split(".")[0].encode() in response.content
    edited = template.text + " The 7B model fits your benchmark."
    response = reviewer_client.post(
        url("reject", application), {**data, "reason": edited, "confirmed": "1"}
    )
    assert response.status_code == 302
    decision = application.decisions.get(variant__slug="65b")
    assert decision.outcome == SizeOutcome.REJECTED and decision.reason == edited
    assert "size.rejected" in audit_actions(reviewer)
    event = application.events.filter(variant__slug="65b").last()
    assert edited in event.public_message


def test_a_rejection_needs_a_reason(reviewer_client):
    application = submit(None, "7b")
    response = reviewer_client.post(url("reject", application), {"size": "7b", "reason": " "})
    assert response.status_code == 400
    assert b"Write a reason or pick a template" in response.content


def test_returning_for_changes(reviewer_client, reviewer):
    application = submit(None, "7b")
    data = {"message": "Please name your supervisor.", "note": "Student, probably."}
    assert reviewer_client.post(url("return", application), data).status_code == 200
    response = reviewer_client.post(url("return", application), {**data, "confirmed": "1"})
    assert response.status_code == 302
    application.refresh_from_db()
    assert application.state == ApplicationState.RETURNED
    assert "application.returned" in audit_actions(reviewer)
    event = application.events.order_by("-id").first()
    assert (event.public_message, event.internal_note) == (data["message"], data["note"])


def test_second_approval_by_a_different_reviewer(client, reviewer, second_reviewer):
    application = submit(None, "33b")
    data = {"size": "33b", "ends_on": (timezone.localdate() + timedelta(days=30)).isoformat()}
    client.force_login(reviewer)
    client.post(url("approve", application), {**data, "confirmed": "1"})
    assert outcomes(application) == {"33b": "awaiting_second"}
    # The first reviewer is offered no second approval, and the service refuses one.
    page = client.get(url("detail", application)).content.decode()
    assert "Confirm approval" not in page
    response = client.post(url("approve", application), {**data, "confirmed": "1"})
    assert response.status_code == 409
    client.force_login(second_reviewer)
    assert "Confirm approval" in client.get(url("detail", application)).content.decode()
    client.post(url("approve", application), {**data, "confirmed": "1"})
    assert outcomes(application) == {"33b": "approved"}
    assert "size.first_approval" in audit_actions(reviewer)
    assert "size.approved" in audit_actions(second_reviewer)


def test_revoking_a_grant_stops_it_at_once(reviewer_client, reviewer, researcher):
    grant = researcher.grants.get(variant__slug="7b")
    token, _ = token_create(user=researcher, name="notebook", scopes=["download"])
    target = reverse("review:revoke", kwargs={"grant_id": grant.pk})
    data = {"reason": "Shared the weights in a public bucket."}
    assert reviewer_client.post(target, data).status_code == 200
    grant.refresh_from_db()
    assert grant.status == GrantStatus.ACTIVE
    assert reviewer_client.post(target, {**data, "confirmed": "1"}).status_code == 302
    grant.refresh_from_db()
    assert grant.status == GrantStatus.REVOKED and grant.revoke_reason == data["reason"]
    assert AccessToken.objects.get(pk=token.pk).revoked_at is not None
    assert "grant.revoked" in audit_actions(reviewer)


def test_notes_are_recorded_and_shown_to_reviewers_only(reviewer_client, reviewer, client):
    application = submit(None, "7b")
    reviewer_client.post(url("add_note", application), {"text": "Checked the lab page."})
    assert InternalNote.objects.get(application=application).text == "Checked the lab page."
    assert b"Checked the lab page." in reviewer_client.get(url("detail", application)).content
    assert "review.note_added" in audit_actions(reviewer)
    client.force_login(application.user)
    assert b"Checked the lab page." not in client.get("/access/").content


def test_bulk_approval_decides_each_and_reports_those_it_could_not(
    reviewer_client, reviewer, second_reviewer
):
    from review.services import claim_take

    first, second, taken = submit(None, "7b"), submit(None, "7b", "13b"), submit(None, "7b")
    claim_take(application=taken, reviewer=second_reviewer)
    data = {"action": "approve", "ids": [first.pk, second.pk, taken.pk]}
    response = reviewer_client.post(reverse("review:bulk"), data)
    assert response.status_code == 200 and b"Confirm: Bulk approval" in response.content
    assert outcomes(first) == {"7b": "pending"}
    response = reviewer_client.post(reverse("review:bulk"), {**data, "confirmed": "1"}, follow=True)
    assert outcomes(first) == {"7b": "approved"}
    assert outcomes(second) == {"7b": "approved", "13b": "approved"}
    assert outcomes(taken) == {"7b": "pending"}
    assert f"#{taken.pk} not changed" in response.content.decode()
    assert audit_actions(reviewer).count("size.approved") == 3


def test_bulk_rejection_with_one_reason(reviewer_client, reviewer):
    template = ReasonTemplate.objects.get(kind="reject", title="Not research use")
    apps = [submit(None, "7b"), submit(None, "13b", "65b")]
    data = {"action": "reject", "ids": [a.pk for a in apps], "template": template.pk}
    response = reviewer_client.post(reverse("review:bulk"), data)
    assert template.text.split(".")[0].encode() in response.content
    reviewer_client.post(
        reverse("review:bulk"), {**data, "reason": template.text, "confirmed": "1"}
    )
    for application in apps:
        application.refresh_from_db()
        assert application.state == ApplicationState.REJECTED
        assert {d.reason for d in application.decisions.all()} == {template.text}
    assert audit_actions(reviewer).count("size.rejected") == 3


def test_bulk_rejection_without_a_reason_is_refused(reviewer_client):
    application = submit(None, "7b")
    response = reviewer_client.post(
        reverse("review:bulk"), {"action": "reject", "ids": [application.pk], "confirmed": "1"}
    )
    assert response.status_code == 400
    assert outcomes(application) == {"7b": "pending"}


def test_bad_input_is_a_400_with_a_reason(reviewer_client):
    application = submit(None, "7b")
    past = (timezone.localdate() - timedelta(days=1)).isoformat()
    response = reviewer_client.post(url("approve", application), {"size": "7b", "ends_on": past})
    assert response.status_code == 400 and b"after today" in response.content
    response = reviewer_client.post(
        url("approve", application),
        {
            "size": "65b",
            "ends_on": (timezone.localdate() + timedelta(days=9)).isoformat(),
            "confirmed": "1",
        },
    )
    assert response.status_code == 400 and b"did not request" in response.content
    response = reviewer_client.get(reverse("review:detail", kwargs={"application_id": 999999}))
    assert response.status_code == 404
