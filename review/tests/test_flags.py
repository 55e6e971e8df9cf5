"""Each automatic flag: a case built for it raises it, a clean case does not."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import flags, services
from accounts.models import Application, ApplicationState, SizeDecision, SizeOutcome
from accounts.tests.factories import UserFactory
from catalog.models import ModelVariant
from review.models import FlagCode
from review.services import flags_record
from review.tests.helpers import flag_codes, submit, unique_use_case

pytestmark = pytest.mark.django_db


def test_a_clean_application_raises_no_flag():
    application = submit(ip="198.51.100.7")
    assert flag_codes(application) == set()


def test_free_webmail_is_flagged_and_an_institutional_address_is_not():
    flagged = submit(email="ada.l@gmail.com", web_page="")
    assert FlagCode.WEBMAIL in flag_codes(flagged)
    # The mismatch flag would say the same thing again; webmail is the one raised.
    assert FlagCode.DOMAIN_MISMATCH not in flag_codes(flagged)
    assert FlagCode.WEBMAIL not in flag_codes(submit(email="ada@cs.ox.ac.uk"))


def test_extra_webmail_domains_come_from_settings(settings):
    settings.REVIEW_WEBMAIL_DOMAINS = ["mailbox.example"]
    assert FlagCode.WEBMAIL in flag_codes(submit(email="ada@mailbox.example"))


def test_an_email_domain_unlike_the_institutional_page_is_flagged():
    flagged = submit(email="ada@quick-models.example.com")
    assert FlagCode.DOMAIN_MISMATCH in flag_codes(flagged)
    assert "quick-models.example.com" in flagged.review_flags.get().detail
    # Subdomains of one institution match (cs.ox.ac.uk and www.ox.ac.uk).
    assert FlagCode.DOMAIN_MISMATCH not in flag_codes(submit(email="ada@maths.ox.ac.uk"))


def test_without_a_web_page_the_domain_is_compared_with_the_affiliation():
    flagged = submit(email="ada@mit.edu", web_page="", affiliation="University of Oxford")
    assert FlagCode.DOMAIN_MISMATCH in flag_codes(flagged)
    same = submit(
        email="ada2@mit.edu", web_page="", affiliation="Massachusetts Institute of Technology"
    )
    assert FlagCode.DOMAIN_MISMATCH not in flag_codes(same)
    assert FlagCode.DOMAIN_MISMATCH not in flag_codes(
        submit(email="ada@stanford.edu", web_page="", affiliation="Stanford University")
    )


def test_a_near_duplicate_use_case_from_another_account_is_flagged():
    text = unique_use_case()
    first = submit(use_case=text)
    edited = text.replace("We measure", "We carefully measure").replace("publish", "share")
    second = submit(use_case=edited)
    assert FlagCode.DUPLICATE_USE_CASE in flag_codes(second)
    flag = second.review_flags.get(code=FlagCode.DUPLICATE_USE_CASE)
    assert flag.related_application_id == first.pk
    assert FlagCode.DUPLICATE_USE_CASE not in flag_codes(first)
    assert FlagCode.DUPLICATE_USE_CASE not in flag_codes(submit(use_case=unique_use_case()))


def test_the_same_text_from_the_same_account_is_not_a_duplicate(reviewer):
    text = unique_use_case()
    first = submit(use_case=text)
    services.application_reject(application=first, reviewer=reviewer, reason="Too vague.")
    again = submit(first.user, use_case=text)
    assert FlagCode.DUPLICATE_USE_CASE not in flag_codes(again)


def test_the_duplicate_search_is_bounded(settings):
    text = unique_use_case()
    submit(use_case=text)
    submit()  # a newer, unrelated application fills the only candidate slot
    settings.REVIEW_DUPLICATE_CANDIDATES = 1
    assert FlagCode.DUPLICATE_USE_CASE not in flag_codes(submit(use_case=text))


def test_several_accounts_from_one_ip_are_flagged():
    first = submit(ip="203.0.113.9")
    second = submit(ip="203.0.113.9")
    assert FlagCode.SHARED_IP in flag_codes(second)
    assert second.review_flags.get(code=FlagCode.SHARED_IP).related_application_id == first.pk
    assert FlagCode.SHARED_IP not in flag_codes(first)
    assert FlagCode.SHARED_IP not in flag_codes(submit(ip="203.0.113.10"))


def test_a_license_acceptance_from_the_same_ip_counts(settings, researcher):
    from accounts.models import LicenseAcceptance

    LicenseAcceptance.objects.filter(user=researcher).update(ip="203.0.113.20")
    assert FlagCode.SHARED_IP in flag_codes(submit(ip="203.0.113.20"))
    settings.REVIEW_SHARED_IP_ACCOUNTS = 3
    assert FlagCode.SHARED_IP not in flag_codes(submit(ip="203.0.113.21"))


def test_a_restricted_country_is_flagged(settings):
    settings.REVIEW_RESTRICTED_COUNTRIES = ["KP"]
    assert FlagCode.RESTRICTED_COUNTRY in flag_codes(submit(country="KP"))
    assert FlagCode.RESTRICTED_COUNTRY not in flag_codes(submit(country="GB"))


def test_an_invalid_orcid_is_flagged():
    # Submission already refuses a bad check digit; the flag catches data that came in
    # another way (an admin edit, an import), recomputed like any flag.
    application = submit()
    Application.objects.filter(pk=application.pk).update(orcid="0000-0002-1825-0098")
    application.refresh_from_db()
    assert FlagCode.INVALID_ORCID in flags_record(application=application)
    assert FlagCode.INVALID_ORCID not in flag_codes(submit(orcid="0000-0002-1825-0097"))
    assert FlagCode.INVALID_ORCID not in flag_codes(submit(orcid=""))


def test_a_recent_rejection_is_flagged_and_an_old_one_is_not(reviewer):
    user = UserFactory(email="again@cs.ox.ac.uk")
    first = submit(user)
    services.application_reject(application=first, reviewer=reviewer, reason="Too vague.")
    again = submit(user)
    assert FlagCode.RECENT_REJECTION in flag_codes(again)
    assert again.review_flags.get(code="recent_rejection").related_application_id == first.pk

    other = UserFactory(email="later@cs.ox.ac.uk")
    old = submit(other)
    services.application_reject(application=old, reviewer=reviewer, reason="Too vague.")
    SizeDecision.objects.filter(application=old).update(
        decided_at=timezone.now() - timedelta(days=400)
    )
    assert FlagCode.RECENT_REJECTION not in flag_codes(submit(other))


def test_flags_are_recomputed_on_resubmission(reviewer, settings):
    settings.REVIEW_RESTRICTED_COUNTRIES = ["KP"]
    application = submit(country="KP")
    assert flag_codes(application) == {FlagCode.RESTRICTED_COUNTRY}
    services.application_return(application=application, reviewer=reviewer, message="Fix it.")
    services.application_save_draft(
        application=application, user=application.user, data={"country": "GB"}
    )
    services.application_resubmit(application=application, user=application.user)
    assert flag_codes(application) == set()


def test_a_flag_stops_automatic_approval_and_a_clean_case_is_approved():
    demo = ModelVariant.objects.get(slug="demo")
    clean = submit(None, "demo")
    clean.refresh_from_db()
    assert clean.state == ApplicationState.APPROVED
    flagged = submit(None, "demo", email="someone@gmail.com", web_page="")
    flagged.refresh_from_db()
    assert flagged.state == ApplicationState.SUBMITTED
    assert SizeDecision.objects.get(application=flagged, variant=demo).outcome == (
        SizeOutcome.PENDING
    )


def test_a_failing_flag_check_blocks_automatic_approval(monkeypatch):
    def broken(application):
        raise RuntimeError("database went away")

    monkeypatch.setattr(flags, "CHECKS", (broken,))
    application = submit(None, "demo")
    application.refresh_from_db()
    assert application.state == ApplicationState.SUBMITTED
    note = application.events.order_by("-id").first().internal_note
    assert "flags_unavailable" in note


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("cs.ox.ac.uk", "ox.ac.uk"),
        ("www.stanford.edu", "stanford.edu"),
        ("uni.edu.au", "uni.edu.au"),
        ("example.org", "example.org"),
        ("a.b.example.co.jp", "example.co.jp"),
    ],
)
def test_registrable_domain(host, expected):
    assert flags.registrable_domain(host) == expected


def test_shingled_jaccard():
    a = flags.shingles("The quick brown fox jumps over the lazy dog")
    assert flags.jaccard(a, flags.shingles("the QUICK brown fox, jumps over the lazy dog!")) == 1
    assert flags.jaccard(a, flags.shingles("Completely different words here now")) == 0
