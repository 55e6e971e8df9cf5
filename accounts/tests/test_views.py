"""The researcher's pages: thin views over the services."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import services
from accounts.models import AccessToken, ApplicationState, LicenseAcceptance
from accounts.tests.factories import USE_CASE, UserFactory
from catalog.models import ModelVariant

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_user(client):
    def login(user):
        client.force_login(user)
        return client

    return login


def complete_form(**overrides):
    data = {
        "full_name": "Otto Outside",
        "affiliation": "Institute of Things",
        "organization_type": "government",
        "country": "DE",
        "position": "Research scientist",
        "orcid": "0000-0002-1825-0097",
        "web_page": "https://things.example.org/otto",
        "publications": "",
        "use_case": USE_CASE,
        "requested_variants": [ModelVariant.objects.get(slug="7b").pk],
        "action": "submit",
    }
    data.update(overrides)
    return data


# The license is readable before signing up (issue 14): see the test of that below.
@pytest.mark.parametrize("path", ["/access/", "/access/apply/", "/access/tokens/"])
def test_pages_ask_anonymous_visitors_to_sign_in(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_a_new_applicant_submits_after_fixing_errors_and_nothing_is_lost(outsider, as_user):
    client = as_user(outsider)
    assert client.get("/access/apply/").status_code == 200

    bad = complete_form(orcid="0000-0002-1825-0098", use_case="Too short.", country="")
    response = client.post("/access/apply/", bad)
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="errors-orcid"' in html and "check digit" in html
    assert 'id="errors-use_case"' in html
    assert 'id="errors-country"' in html
    assert 'value="Institute of Things"' in html  # what was typed is still there
    app = outsider.applications.get()
    assert app.state == ApplicationState.DRAFT
    assert app.affiliation == "Institute of Things"  # and saved as a draft

    response = client.post("/access/apply/", complete_form())
    assert response.status_code == 302
    app.refresh_from_db()
    assert app.state == ApplicationState.SUBMITTED
    assert app.submitted_ip == "127.0.0.1"


def test_a_field_that_does_not_parse_keeps_the_rest_of_the_draft(outsider, as_user):
    client = as_user(outsider)
    response = client.post(
        "/access/apply/",
        complete_form(web_page="not a url", supervisor_email="nope", action="save"),
    )
    assert response.status_code == 400
    assert 'id="errors-web_page"' in response.content.decode()
    app = outsider.applications.get()
    assert (app.affiliation, app.web_page) == ("Institute of Things", "")
    assert [v.slug for v in app.requested_variants.all()] == ["7b"]


def test_status_shows_state_queue_timeline_and_not_internal_notes(applicant, reviewer, as_user):
    app = applicant.applications.get()
    services.application_return(
        application=app, reviewer=reviewer, message="Please add your ORCID.", note="SECRET NOTE"
    )
    html = as_user(applicant).get("/access/").content.decode()
    assert "Returned for changes" in html
    assert "Please add your ORCID." in html
    assert "SECRET NOTE" not in html
    assert "Change and resubmit" in html


def test_status_shows_the_queue_position_for_a_submitted_application(applicant, as_user):
    html = as_user(applicant).get("/access/").content.decode()
    assert re.search(r"Position in the review queue: <strong>1</strong>", html)


def test_status_lists_grants_and_what_blocks_use(researcher, as_user):
    from catalog.models import DEFAULT_LICENSE_SLUG, License

    services.license_publish_version(
        license=License.objects.get(slug=DEFAULT_LICENSE_SLUG), title="License", text="v2"
    )
    html = as_user(researcher).get("/access/").content.decode()
    assert 'id="blockers"' in html and "needs your acceptance" in html
    assert "LLaMA 7B" in html and "LLaMA demo" in html


def test_withdraw_and_apply_again(applicant, as_user):
    client = as_user(applicant)
    assert client.post("/access/withdraw/").status_code == 302
    assert applicant.applications.get().state == ApplicationState.WITHDRAWN
    # A second withdrawal is a conflict, said plainly.
    response = client.post("/access/withdraw/")
    assert response.status_code == 409
    assert client.post("/access/reapply/")["Location"] == "/access/apply/"
    new = applicant.applications.order_by("-id").first()
    assert new.state == ApplicationState.DRAFT and new.previous is not None


def test_the_license_needs_the_tick_and_the_name(outsider, as_user):
    from accounts.tests.factories import grant_access

    grant_access(outsider, "7b", accept_license=False)
    client = as_user(outsider)
    page = client.get("/access/license/")
    assert "NONCOMMERCIAL" in page.content.decode()
    version = page.context["version"]

    response = client.post(
        "/access/license/", {"version": version.pk, "typed_name": "Otto Outside"}
    )
    assert response.status_code == 400
    assert "Tick the box" in response.content.decode()
    response = client.post(
        "/access/license/", {"version": version.pk, "agree": "on", "typed_name": "Someone"}
    )
    assert response.status_code == 400
    assert not LicenseAcceptance.objects.filter(user=outsider).exists()

    response = client.post(
        "/access/license/",
        {"version": version.pk, "agree": "on", "typed_name": "Otto Outside"},
        HTTP_USER_AGENT="TestBrowser/1.0",
    )
    assert response.status_code == 302
    acceptance = LicenseAcceptance.objects.get(user=outsider)
    assert (acceptance.ip, acceptance.user_agent) == ("127.0.0.1", "TestBrowser/1.0")


def test_a_token_is_shown_once_then_only_its_prefix(researcher, as_user):
    client = as_user(researcher)
    response = client.post(
        "/access/tokens/", {"name": "laptop", "scopes": ["download"], "expires_in_days": 30}
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    key = response.context["new_key"]
    assert key in response.content.decode()
    listing = client.get("/access/tokens/").content.decode()
    assert key not in listing
    assert key[:12] in listing


def test_tokens_page_refuses_a_token_without_scopes(researcher, as_user):
    response = as_user(researcher).post("/access/tokens/", {"name": "x", "expires_in_days": 30})
    assert response.status_code == 400
    assert "Choose at least one scope." in response.content.decode()
    assert not AccessToken.objects.filter(user=researcher).exists()


def test_someone_elses_token_cannot_be_revoked(researcher, outsider, as_user):
    token, _ = services.token_create(user=researcher, name="x", scopes=["download"])
    response = as_user(outsider).post(f"/access/tokens/{token.pk}/revoke/")
    assert response.status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    assert as_user(researcher).post(f"/access/tokens/{token.pk}/revoke/").status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_token_list_runs_a_constant_number_of_queries(researcher, as_user):
    client = as_user(researcher)
    services.token_create(user=researcher, name="one", scopes=["download"])
    with CaptureQueriesContext(connection) as one:
        client.get("/access/tokens/")
    for i in range(5):
        services.token_create(user=researcher, name=f"t{i}", scopes=["generate"])
    with CaptureQueriesContext(connection) as six:
        client.get("/access/tokens/")
    assert len(one) == len(six)


def test_status_page_query_count_does_not_grow_with_events(applicant, reviewer, as_user):
    client = as_user(applicant)
    with CaptureQueriesContext(connection) as before:
        client.get("/access/")
    app = applicant.applications.get()
    for _ in range(3):
        services.application_return(application=app, reviewer=reviewer, message="More.")
        services.application_resubmit(application=app, user=applicant)
    with CaptureQueriesContext(connection) as after:
        client.get("/access/")
    assert len(after) == len(before)


def test_sign_up_sends_a_verification_link_and_login_waits_for_it(client, mailoutbox):
    response = client.post(
        "/accounts/signup/",
        {
            "email": "new@uni.example.edu",
            "password1": "plenty-long-Pass-42",
            "password2": "plenty-long-Pass-42",
        },
    )
    assert response.status_code == 302
    assert len(mailoutbox) == 1
    assert "/accounts/confirm-email/" in mailoutbox[0].body
    # Not verified yet: the access pages are still closed.
    assert client.get("/access/").status_code == 302


def test_the_password_policy_refuses_short_and_common_passwords(client):
    for password in ["short-1", "password1234"]:
        response = client.post(
            "/accounts/signup/",
            {"email": "p@uni.example.edu", "password1": password, "password2": password},
        )
        assert response.status_code == 200
        assert response.context["form"].errors["password1"]
    assert not UserFactory._meta.model.objects.filter(email="p@uni.example.edu").exists()


def test_failed_logins_are_audited_and_throttled(researcher, client):
    from accounts.models import AuditEntry
    from accounts.tests.factories import CAST_PASSWORD

    for _ in range(5):
        response = client.post(
            "/accounts/login/", {"login": researcher.email, "password": "wrong-password-x"}
        )
        assert response.status_code == 200
    assert AuditEntry.objects.filter(action="login.failed").count() >= 5
    response = client.post(
        "/accounts/login/", {"login": researcher.email, "password": CAST_PASSWORD}
    )
    assert response.status_code in (200, 429)
    assert "_auth_user_id" not in client.session  # throttled even with the right password
    assert "Too many failed login attempts" in response.content.decode()


@pytest.mark.parametrize(
    "model",
    [
        "accounts/application",
        "accounts/grant",
        "accounts/accesstoken",
        "catalog/licenseversion",  # licenses are the catalog's since the layers were drawn
        "accounts/licenseacceptance",
        "accounts/auditentry",
    ],
)
def test_admin_shows_raw_data_read_only(client, researcher, model):
    from accounts.models import User

    admin = User.objects.create_superuser("root@portal.example.org", "root-password-long-1")
    client.force_login(admin)
    assert client.get(f"/admin/{model}/").status_code == 200
    assert client.get(f"/admin/{model}/add/").status_code == 403


def test_the_status_page_shows_the_median_time_to_decision(applicant, reviewer, as_user):
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import Application
    from accounts.tests.factories import application_fill

    decided = application_fill(UserFactory(), "7b")
    services.application_reject(application=decided, reviewer=reviewer, reason="No.")
    Application.objects.filter(pk=decided.pk).update(
        submitted_at=timezone.now() - timedelta(days=6), decided_at=timezone.now()
    )
    html = as_user(applicant).get("/access/").content.decode()
    assert '<strong id="median">about 6 days</strong>' in html


def test_password_reset_mails_a_link_and_the_change_kills_tokens(researcher, client, mailoutbox):
    from accounts.models import AuditEntry

    services.token_create(user=researcher, name="a", scopes=["download"])
    response = client.post("/accounts/password/reset/", {"email": researcher.email})
    assert response.status_code == 302
    link = re.search(r"http://\S+/accounts/password/reset/key/\S+", mailoutbox[0].body).group(0)
    response = client.get(link, follow=True)
    form_url = response.redirect_chain[-1][0] if response.redirect_chain else link
    new = "another-Long-passphrase-99"
    response = client.post(form_url, {"password1": new, "password2": new})
    assert response.status_code == 302
    assert not AccessToken.objects.filter(user=researcher, revoked_at__isnull=True).exists()
    assert AuditEntry.objects.filter(action="user.password_changed").exists()


def test_status_page_query_count_does_not_grow_with_grants(as_user):
    from accounts.tests.factories import grant_access

    few, many = UserFactory(), UserFactory()
    grant_access(few, "demo")
    grant_access(many, "demo", "7b", "13b", "33b")
    counts = []
    for user in (few, many):
        client = as_user(user)
        client.get("/access/")  # the first request of a session loads it; count the next
        with CaptureQueriesContext(connection) as queries:
            client.get("/access/")
        counts.append([q["sql"][:90] for q in queries])
    assert len(counts[0]) == len(counts[1]), counts


def test_status_says_why_a_revoked_researcher_is_blocked(revoked_researcher, as_user):
    html = as_user(revoked_researcher).get("/access/").content.decode()
    assert "Your access to LLaMA 7B was revoked: Shared the weights." in html


def test_reviewers_land_on_the_console_and_researchers_on_their_access(
    client, reviewer, researcher
):
    from accounts.tests.factories import CAST_PASSWORD

    for person, landing in ((reviewer, "/review/"), (researcher, "/access/")):
        client.logout()
        response = client.post(
            "/accounts/login/", {"login": person.email, "password": CAST_PASSWORD}
        )
        assert response.status_code == 302
        assert response["Location"] == landing
    client.logout()
    response = client.post(
        "/accounts/login/?next=/models/", {"login": reviewer.email, "password": CAST_PASSWORD}
    )
    assert response["Location"] == "/models/"  # where they were going still wins


def test_the_license_can_be_read_before_signing_up_and_accepted_only_after(client):
    page = client.get("/access/license/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="license-text"' in html and 'id="license-sign-up"' in html
    assert "Accept the license</button>" not in html
    refused = client.post("/access/license/", {"agree": "on", "typed_name": "Ada"})
    assert refused.status_code == 302
    assert refused["Location"].startswith("/accounts/login/")


def test_every_invalid_field_is_listed_at_the_top_with_a_link_to_it(outsider, as_user):
    client = as_user(outsider)
    client.get("/access/apply/")
    bad = complete_form(orcid="0000-0002-1825-0098", use_case="Too short.", country="")
    html = client.post("/access/apply/", bad).content.decode()
    summary = html[
        html.index('id="error-summary"') : html.index("</div>", html.index('id="error-summary"'))
    ]
    assert "3 things to fix" in summary
    for field in ("orcid", "use_case", "country"):
        assert f'href="#field-{field}"' in summary and f'id="field-{field}"' in html


def test_allauths_emails_carry_the_portals_name_and_signature(
    client, mailoutbox, researcher, settings
):
    client.post(
        "/accounts/signup/",
        {
            "email": "branded@uni.example.edu",
            "password1": "plenty-long-Pass-42",
            "password2": "plenty-long-Pass-42",
        },
    )
    client.post("/accounts/password/reset/", {"email": researcher.email})
    assert len(mailoutbox) == 2
    for message in mailoutbox:
        assert message.subject.startswith("[LLaMA access] ")
        assert message.body.startswith("Hello from the LLaMA research access portal,")
        assert f"-- The LLaMA research access team\n{settings.SITE_URL}" in message.body
        assert "example.com" not in message.body
