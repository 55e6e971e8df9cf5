"""The applicant's side: drafts, completeness, resubmission, re-application, status data."""

from __future__ import annotations

from datetime import timedelta

import pytest
from allauth.account.models import EmailAddress
from django.utils import timezone

from accounts import services
from accounts.models import Application, ApplicationState, SizeOutcome
from accounts.selectors import application_queue_position, decision_median_time
from accounts.tests.factories import UserFactory, application_fill
from catalog.models import ModelVariant
from core.errors import InvalidInput

pytestmark = pytest.mark.django_db


def test_a_draft_keeps_what_was_typed_even_when_incomplete(outsider):
    app = services.application_start(user=outsider)
    services.application_save_draft(
        application=app,
        user=outsider,
        data={
            "affiliation": " Lab ",
            "use_case": "too short",
            "orcid": "orcid.org/0000000218250097",
        },
        variants=[ModelVariant.objects.get(slug="7b")],
    )
    app.refresh_from_db()
    assert (app.state, app.affiliation, app.use_case) == ("draft", "Lab", "too short")
    assert app.orcid == "0000-0002-1825-0097"
    assert [x.slug for x in app.requested_variants.all()] == ["7b"]


def test_an_incomplete_application_is_refused_with_reasons_by_field(outsider):
    app = services.application_start(user=outsider)
    services.application_save_draft(
        application=app,
        user=outsider,
        data={
            "full_name": "Otto Outside",
            "use_case": "short",
            "orcid": "0000-0002-1825-0098",
            "is_student": True,
        },
    )
    with pytest.raises(InvalidInput) as excinfo:
        services.application_submit(application=app, user=outsider)
    fields = excinfo.value.extra["fields"]
    assert {
        "affiliation",
        "organization_type",
        "country",
        "position",
        "orcid",
        "use_case",
        "supervisor_name",
        "supervisor_email",
        "requested_variants",
    } <= set(fields)
    assert "full_name" not in fields
    app.refresh_from_db()
    assert app.state == ApplicationState.DRAFT


def test_an_unverified_address_cannot_submit():
    user = UserFactory(verified=False)
    app = application_fill(user, "7b", submit=False)
    with pytest.raises(InvalidInput) as excinfo:
        services.application_submit(application=app, user=user)
    assert "Verify your email" in excinfo.value.extra["fields"][""][0]
    EmailAddress.objects.filter(user=user).update(verified=True)
    assert services.application_submit(application=app, user=user).state == "submitted"


def test_start_returns_the_open_application_instead_of_a_second(applicant):
    app = applicant.applications.get()
    assert services.application_start(user=applicant) == app
    assert applicant.applications.count() == 1


def test_returned_application_is_edited_and_resubmitted(applicant, reviewer):
    app = applicant.applications.get()
    first_submitted = app.submitted_at
    services.application_return(application=app, reviewer=reviewer, message="Add your ORCID.")
    services.application_save_draft(
        application=app,
        user=applicant,
        data={"orcid": "0000-0001-5109-3700"},
        variants=list(ModelVariant.objects.filter(slug="7b")),
    )
    app = services.application_resubmit(application=app, user=applicant)
    app.refresh_from_db()
    assert app.state == ApplicationState.SUBMITTED
    assert app.submitted_at == first_submitted  # keeps its place in the queue
    assert app.last_submitted_at > first_submitted
    assert [d.variant.slug for d in app.decisions.all()] == ["7b"]  # 13B dropped
    assert [e.to_state for e in app.events.all()] == ["draft", "submitted", "returned", "submitted"]
    returned = app.events.get(to_state="returned")
    assert (returned.actor, returned.public_message) == (reviewer, "Add your ORCID.")


def test_reapplying_after_a_rejection_links_and_prefills(applicant, reviewer):
    old = applicant.applications.get()
    services.application_reject(application=old, reviewer=reviewer, reason="Vague use case.")
    new = services.application_start(user=applicant)
    assert new.pk != old.pk
    assert new.previous == old
    assert new.state == ApplicationState.DRAFT
    assert (new.affiliation, new.orcid) == (old.affiliation, old.orcid)
    # Issue 14: the research use is kept too; the applicant edits what the reviewer asked.
    assert new.use_case == old.use_case


def test_withdrawal_closes_the_undecided_sizes(applicant):
    app = services.application_withdraw(application=applicant.applications.get(), user=applicant)
    assert app.state == ApplicationState.WITHDRAWN
    assert set(app.decisions.values_list("outcome", flat=True)) == {SizeOutcome.WITHDRAWN}


def test_queue_position_and_median_time_to_decision(reviewer):
    apps = [application_fill(UserFactory(), "7b") for _ in range(3)]
    assert [application_queue_position(application=a) for a in apps] == [1, 2, 3]
    services.application_reject(application=apps[0], reviewer=reviewer, reason="No.")
    apps[1].refresh_from_db()
    assert application_queue_position(application=apps[1]) == 1
    assert application_queue_position(application=Application.objects.get(pk=apps[0].pk)) is None

    now = timezone.now()
    Application.objects.filter(pk=apps[0].pk).update(
        submitted_at=now - timedelta(days=4), decided_at=now
    )
    assert decision_median_time() == timedelta(days=4)


def test_emails_at_each_step(outsider, reviewer, mailoutbox, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        app = application_fill(outsider, "7b", "13b")
    with django_capture_on_commit_callbacks(execute=True):
        services.application_return(application=app, reviewer=reviewer, message="Add a web page.")
    with django_capture_on_commit_callbacks(execute=True):
        services.application_resubmit(application=app, user=outsider)
    with django_capture_on_commit_callbacks(execute=True):
        services.application_approve(
            application=app,
            reviewer=reviewer,
            variants=list(ModelVariant.objects.filter(slug="7b")),
        )
        services.application_reject(application=app, reviewer=reviewer, reason="13B: no need.")
    subjects = [m.subject for m in mailoutbox]
    assert subjects == [
        "[LLaMA access] Your application was received",
        "[LLaMA access] Your application needs changes",
        "[LLaMA access] Your application was received",
        "[LLaMA access] A decision on your application",
    ]
    assert all(m.to == [outsider.email] for m in mailoutbox)
    assert "Add a web page." in mailoutbox[1].body
    decided = mailoutbox[3].body
    assert "13B: no need." in decided and "Approved" in decided
    assert "&#x27;" not in decided and "&amp;" not in decided


@pytest.mark.parametrize("accepted_before", [False, True])
def test_the_decision_email_carries_the_reviewers_message_and_asks_for_the_license_if_due(
    outsider, reviewer, mailoutbox, django_capture_on_commit_callbacks, accepted_before
):
    from accounts.selectors import license_current_version, license_for_variant

    seven = ModelVariant.objects.get(slug="7b")
    app = application_fill(outsider, "7b")
    if accepted_before:
        services.license_accept(
            user=outsider,
            version=license_current_version(license_for_variant(seven)),
            typed_name=services.user_full_name(outsider),
        )
    with django_capture_on_commit_callbacks(execute=True):
        services.application_approve(
            application=app,
            reviewer=reviewer,
            variants=[seven],
            message="Welcome: the bias study fits the license well.",
        )
    decided = mailoutbox[-1].body
    assert decided.count("Welcome: the bias study fits the license well.") == 1
    assert ("read and accept the license" in decided) is not accepted_before
