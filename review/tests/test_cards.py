"""The console's model-card editor: staff preview and save a new version (never an edit in
place), each save in the audit log; nobody else can reach it."""

from __future__ import annotations

import json

import pytest

from accounts.models import AuditEntry
from catalog.models import ModelCardVersion

pytestmark = pytest.mark.django_db


def _form(slug: str = "7b", **changes) -> dict:
    card = ModelCardVersion.objects.filter(variant__slug=slug).order_by("-version").first()
    data = {
        "summary": card.summary,
        "metadata": "".join(f"{label}: {value}\n" for label, value in card.metadata),
        "body": card.body,
        "tables": json.dumps(card.tables),
        "change_note": "Clearer intended use.",
        "action": "save",
    }
    data.update(changes)
    return data


def test_staff_edit_creates_a_new_version_and_an_audit_entry(client, reviewer):
    client.force_login(reviewer)
    before = ModelCardVersion.objects.get(variant__slug="7b", version=1)
    body_v1 = before.body

    assert client.get("/review/cards/").status_code == 200
    form_page = client.get("/review/cards/7b/")
    assert form_page.status_code == 200
    assert "Model details" in form_page.content.decode()  # the form holds the current text
    response = client.post(
        "/review/cards/7b/",
        _form(body=body_v1.replace("## Intended use", "## Intended use\n\nEdited by staff.")),
    )

    assert response.status_code == 302
    assert response["Location"] == "/models/7b/card/v2/"
    v1, v2 = ModelCardVersion.objects.filter(variant__slug="7b").order_by("version")
    assert v1.body == body_v1  # never edited in place
    assert "Edited by staff." in v2.body and v2.version == 2
    assert v2.tables == v1.tables
    assert v2.author_ref.endswith(reviewer.email)
    entry = AuditEntry.objects.filter(action="catalog.card_published").get()
    assert entry.actor == reviewer
    assert entry.target == "card:7b"
    assert entry.data["version"] == 2 and entry.data["sha256"] == v2.sha256
    assert "Edited by staff." in client.get("/models/7b/card/").content.decode()
    assert "Edited by staff." not in client.get("/models/7b/card/v1/").content.decode()


def test_preview_shows_the_card_safely_and_saves_nothing(client, reviewer):
    client.force_login(reviewer)

    response = client.post(
        "/review/cards/13b/",
        _form("13b", action="preview", body="## Model details\n\n<script>alert(1)</script>\n"),
    )

    page = response.content.decode()
    assert response.status_code == 200
    assert "Preview: version 2" in page
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert ModelCardVersion.objects.filter(variant__slug="13b").count() == 1
    assert not AuditEntry.objects.filter(action="catalog.card_published").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tables": "[{"}, "Not valid JSON"),
        (
            {"tables": '[{"key": "x", "title": "X", "columns": ["a", "b"], "rows": [[1]]}]'},
            "source",
        ),
        ({"body": "## Results\n\n[table: missing]\n"}, "missing"),
        ({"metadata": "no colon here"}, "Label: value"),
        ({"change_note": ""}, "required"),
    ],
)
def test_an_invalid_card_is_refused_with_the_reason(client, reviewer, changes, message):
    client.force_login(reviewer)

    response = client.post("/review/cards/7b/", _form(**changes))

    assert response.status_code == 400
    assert message in response.content.decode()
    assert ModelCardVersion.objects.filter(variant__slug="7b").count() == 1


def test_non_staff_cannot_edit_a_card(client, outsider, researcher):
    assert client.get("/review/cards/7b/").status_code == 403  # anonymous: sign in
    assert client.post("/review/cards/7b/", _form()).status_code == 403
    for person in (outsider, researcher):
        client.force_login(person)
        assert client.get("/review/cards/").status_code == 404
        assert client.get("/review/cards/7b/").status_code == 404
        assert client.post("/review/cards/7b/", _form()).status_code == 404
    assert ModelCardVersion.objects.filter(variant__slug="7b").count() == 1
    assert not AuditEntry.objects.filter(action="catalog.card_published").exists()


def test_an_application_keeps_the_version_seen_after_a_staff_edit(client, applicant, reviewer):
    from catalog.selectors import card_versions_seen

    application = applicant.applications.get()
    client.force_login(reviewer)
    client.post("/review/cards/7b/", _form(summary="Version two of the 7B card."))

    seen = card_versions_seen(application_id=application.pk)
    assert sorted((v.variant.slug, v.version) for v in seen.values()) == [("13b", 1), ("7b", 1)]
    assert ModelCardVersion.objects.filter(variant__slug="7b").count() == 2


def test_the_review_page_shows_the_card_versions_the_applicant_was_shown(
    client, applicant, reviewer
):
    application = applicant.applications.get()
    client.force_login(reviewer)
    client.post("/review/cards/7b/", _form(summary="Version two of the 7B card."))

    page = client.get(f"/review/applications/{application.pk}/").content.decode()

    assert 'href="/models/7b/card/v1/"' in page and "LLaMA 7B version 1" in page
    assert 'href="/models/13b/card/v1/"' in page
    assert "/models/7b/card/v2/" not in page
