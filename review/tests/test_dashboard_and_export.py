"""The dashboard's figures and charts, and the CSV export of decisions."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts import services as accounts_services
from accounts.models import Application, AuditEntry, SizeDecision
from catalog.models import ModelVariant
from review import charts, stats
from review.tests.helpers import submit

pytestmark = pytest.mark.django_db


def test_percentile_matches_interpolation_between_ranks():
    assert stats.percentile([], 0.5) is None
    assert stats.percentile([4.0], 0.9) == 4.0
    assert stats.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert stats.percentile(list(range(1, 11)), 0.9) == pytest.approx(9.1)


def test_dashboard_numbers(reviewer):
    approved, rejected = submit(None, "7b"), submit(None, "7b")
    submit(None, "7b")  # still waiting
    v7 = ModelVariant.objects.get(slug="7b")
    accounts_services.application_approve(application=approved, reviewer=reviewer, variants=[v7])
    accounts_services.application_reject(application=rejected, reviewer=reviewer, reason="No.")
    # Decided two days after submission, four days after.
    now = timezone.now()
    Application.objects.filter(pk=approved.pk).update(submitted_at=now - timedelta(days=2))
    Application.objects.filter(pk=rejected.pk).update(submitted_at=now - timedelta(days=4))
    data = stats.dashboard_stats(weeks=4)
    assert sum(data.outcomes["approved"]) == 1
    assert sum(data.outcomes["rejected"]) == 1
    assert sum(data.outcomes["pending"]) == 1
    assert data.overall_median_days == pytest.approx(3, abs=0.01)
    assert data.overall_p90_days == pytest.approx(3.8, abs=0.01)
    assert data.queue_now == 1 and data.queue_sizes[-1] == 1
    grants = dict(zip([v.slug for v in data.sizes], data.active_grants, strict=True))
    assert grants["7b"] == 1 and grants["13b"] == 0


def test_dashboard_page_draws_svg_charts(reviewer_client, researcher):
    response = reviewer_client.get(reverse("review:dashboard"))
    page = response.content.decode()
    assert response.status_code == 200
    assert page.count("<svg") == 4
    assert "Applications per week" in page and "90th percentile" in page
    assert "<script" not in page.split("<main>")[1].split("</main>")[0]


def test_chart_labels_are_escaped():
    svg = charts.stacked_bars("t", ["<b>"], [charts.Series("<i>", "#000", [1])])
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "&lt;i&gt;" in svg


def _rows(response) -> list[dict]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_export_of_decisions_in_a_date_range(reviewer_client, reviewer):
    application = submit(None, "7b", "65b", full_name="=HYPERLINK(evil)")
    v = {x.slug: x for x in ModelVariant.objects.all()}
    accounts_services.application_approve(
        application=application, reviewer=reviewer, variants=[v["7b"]]
    )
    accounts_services.application_reject(
        application=application, reviewer=reviewer, variants=[v["65b"]], reason="Too large."
    )
    old = submit(None, "13b")
    accounts_services.application_reject(application=old, reviewer=reviewer, reason="Old.")
    SizeDecision.objects.filter(application=old).update(
        decided_at=timezone.now() - timedelta(days=60)
    )
    today = timezone.localdate()
    response = reviewer_client.get(
        reverse("review:export"),
        {"start": (today - timedelta(days=7)).isoformat(), "end": today.isoformat()},
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = _rows(response)
    assert {(r["size"], r["outcome"]) for r in rows} == {("7b", "approved"), ("65b", "rejected")}
    by_size = {r["size"]: r for r in rows}
    assert by_size["65b"]["reason"] == "Too large."
    assert by_size["7b"]["grant_ends_at"] and by_size["7b"]["decided_by"] == reviewer.email
    # A spreadsheet must not run a formula someone typed into their application.
    assert by_size["7b"]["full_name"] == "'=HYPERLINK(evil)"
    assert AuditEntry.objects.filter(action="review.decisions_exported", actor=reviewer).exists()


def test_export_refuses_a_backwards_range(reviewer_client):
    response = reviewer_client.get(
        reverse("review:export"), {"start": "2026-05-01", "end": "2026-04-01"}
    )
    assert response.status_code == 400
    assert b"before the start date" in response.content
