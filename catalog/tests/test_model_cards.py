"""The public model cards: every size's card readable without an account, its tables as data
(CSV and JSON equal to the stored values and to the published figures), Markdown rendered
safely, and the version an application was submitted with kept with it."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from accounts.tests.factories import application_fill
from catalog.models import CardVersionSeen, ModelCardVersion, ModelVariant
from catalog.selectors import card_versions_seen
from catalog.services import card_version_create

pytestmark = pytest.mark.django_db

REFERENCE = (
    Path(__file__).resolve().parents[2]
    / "testdata"
    / "model-cards"
    / "llama1-model-card-figures.md"
)
RELEASED = ["7b", "13b", "33b", "65b"]
SECTIONS = [
    "Model details",
    "Intended use",
    "Out-of-scope use",
    "Factors",
    "Metrics",
    "Evaluation datasets",
    "Training data",
    "Quantitative analysis",
    "Hyperparameters",
    "Common-sense reasoning",
    "Bias by category",
    "Grouped and safety results",
    "Ethical considerations",
]


def _reference_table(heading: str) -> list[list[str]]:
    """The Markdown table under `heading` in the reference figures, as rows of cells."""
    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]
    return rows


def _csv(client, url: str) -> list[list[str]]:
    response = client.get(url)
    assert response.status_code == 200, url
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(response.content.decode())))


@pytest.mark.parametrize("slug", [*RELEASED, "demo"])
def test_anyone_can_read_every_card_without_an_account(client, slug):
    response = client.get(f"/models/{slug}/card/")

    page = response.content.decode()
    assert response.status_code == 200
    assert "Model card" in page
    assert client.get(f"/models/{slug}/card/v1/").status_code == 200
    assert client.get(f"/models/{slug}/card/history/").status_code == 200


@pytest.mark.parametrize("slug", RELEASED)
def test_a_released_size_card_has_every_section_of_the_release_card_and_cites_its_tables(
    client, slug
):
    page = client.get(f"/models/{slug}/card/").content.decode()

    for section in SECTIONS:
        assert f">{section}</h" in page, section
    card = ModelCardVersion.objects.get(variant__slug=slug, version=1)
    assert [t["key"] for t in card.tables] == [
        "hyperparameters", "data_mix", "common_sense", "bias", "grouped", "safety",
    ]  # fmt: skip
    for table in card.tables:
        assert table["source"]
        assert f'id="table-{table["key"]}"' in page
        assert f"/models/{slug}/card/v1/tables/{table['key']}.csv" in page
        assert f"/models/{slug}/card/v1/tables/{table['key']}.json" in page
    assert page.count("<svg") == 5  # every table but the hyperparameters is charted
    assert "arXiv:2302.13971" in page


def test_the_demo_card_is_small_and_has_no_benchmark_figures(client):
    card = ModelCardVersion.objects.get(variant__slug="demo")
    page = client.get("/models/demo/card/").content.decode()

    assert card.tables == []
    assert "trained by this project" in card.summary
    assert "no benchmark" in page
    assert "<svg" not in page


def test_the_tables_csv_and_json_equal_the_stored_values(client):
    card = ModelCardVersion.objects.get(variant__slug="33b", version=1)
    for table in card.tables:
        rows = _csv(client, f"/models/33b/card/v1/tables/{table['key']}.csv")
        assert rows[0] == table["columns"]
        assert rows[1:] == [["" if c is None else str(c) for c in row] for row in table["rows"]]

        document = json.loads(client.get(f"/models/33b/card/v1/tables/{table['key']}.json").content)
        assert document["columns"] == table["columns"]
        assert document["rows"] == table["rows"]
        assert document["source"] == table["source"]
        assert document["card_version"] == 1
        assert document["size"] == "33B"


def test_the_common_sense_and_grouped_tables_equal_the_published_figures(client):
    for key, heading in (
        ("common_sense", "Common-sense reasoning, zero-shot accuracy (%)"),
        ("grouped", "Grouped results and safety benchmarks (as reported with the second release)"),
    ):
        reference = _reference_table(heading)
        document = json.loads(client.get(f"/models/7b/card/tables/{key}.json").content)
        for row in document["rows"]:
            published = next(r for r in reference[1:] if r[0] == row[0])
            # Same benchmarks in the same order, each figure equal as a number.
            for column, value in zip(document["columns"][1:], row[1:], strict=False):
                index = reference[0].index(column)
                assert float(published[index]) == pytest.approx(value), (key, row[0], column)


def test_spot_checks_against_the_published_figures(client):
    reference = REFERENCE.read_text(encoding="utf-8")

    def cell(slug, key, row_label, column):
        rows = _csv(client, f"/models/{slug}/card/tables/{key}.csv")
        return rows[1 + [r[0] for r in rows[1:]].index(row_label)][rows[0].index(column)]

    assert cell("65b", "common_sense", "65B", "BoolQ") == "85.3"
    assert cell("13b", "common_sense", "33B", "ARC-c") == "57.8"
    assert cell("7b", "common_sense", "7B", "COPA") == "93"
    assert cell("65b", "bias", "Religion", "LLaMA 65B") == "79.0"
    assert cell("65b", "bias", "Average", "LLaMA 65B") == "66.6"
    assert cell("7b", "data_mix", "CCNet", "share (%)") == "67.0"
    assert cell("7b", "data_mix", "ArXiv", "share (%)") == "2.5"
    assert cell("7b", "hyperparameters", "33B", "dimension") == "6656"
    assert cell("7b", "hyperparameters", "65B", "layers") == "80"
    assert cell("7b", "grouped", "7B", "math") == "6.95"
    assert cell("7b", "safety", "13B", "TruthfulQA") == "41.74"
    assert cell("7b", "safety", "65B", "ToxiGen") == "21.77"
    # ...and the same numbers are the reference's.
    assert "| 65B | 85.3 |" in reference
    assert "Religion 79.0" in reference and "average 66.6" in reference
    assert "CCNet 67%" in reference and "ArXiv 2.5%" in reference
    assert "| 33B | 6656 |" in reference and "| 65B | 8192 | 64 | 80 |" in reference
    assert "| 7B | 14.1 | 60.8 | 46.2 | 58.5 | 6.95 |" in reference
    assert "41.74" in reference and "21.77" in reference
    lr = json.loads(client.get("/models/7b/card/tables/hyperparameters.json").content)["rows"]
    assert [row[4] for row in lr] == [3.0e-4, 3.0e-4, 1.5e-4, 1.5e-4]
    assert "3.0e-4" in client.get("/models/7b/card/").content.decode()


def test_an_unknown_table_or_format_is_404(client):
    assert client.get("/models/7b/card/tables/nope.csv").status_code == 404
    assert client.get("/models/7b/card/tables/bias.xlsx").status_code == 404
    assert client.get("/models/7b/card/v99/").status_code == 404


def _publish(slug: str, **changes) -> ModelCardVersion:
    current = ModelCardVersion.objects.filter(variant__slug=slug).order_by("-version").first()
    content = {
        "summary": current.summary,
        "metadata": current.metadata,
        "body": current.body,
        "tables": current.tables,
        **changes,
    }
    return card_version_create(
        variant=ModelVariant.objects.get(slug=slug), change_note="test", **content
    )


def test_markdown_with_html_renders_escaped(client):
    _publish(
        "7b",
        summary="<b>bold?</b>",
        body=(
            "## Model details\n\n<script>alert('card')</script>\n\n"
            '<img src=x onerror="alert(1)">\n\n[click](javascript:alert(1))\n\n'
            "![tracker](https://tracker.example/pixel.png)\n\n[table: bias]\n"
        ),
    )

    page = client.get("/models/7b/card/").content.decode()

    assert "<script>alert('card')</script>" not in page
    assert "&lt;script&gt;alert(" in page
    assert "<img src=x" not in page and "&lt;img src=x" in page
    assert 'href="javascript:' not in page
    assert 'src="https://tracker.example' not in page  # images are not rendered (a link is)
    assert "<b>bold?</b>" not in page and "&lt;b&gt;bold?&lt;/b&gt;" in page
    assert 'id="table-bias"' in page


def test_a_table_label_with_html_is_escaped_in_the_chart(client):
    card = ModelCardVersion.objects.get(variant__slug="7b", version=1)
    tables = json.loads(json.dumps(card.tables))
    bias = next(t for t in tables if t["key"] == "bias")
    bias["rows"][0][0] = "<script>x</script>"
    _publish("7b", tables=tables)

    page = client.get("/models/7b/card/").content.decode()

    assert "<script>x</script>" not in page


def test_an_application_keeps_the_card_versions_seen_at_submission(outsider):
    application = application_fill(outsider, "7b", "13b")
    seen = card_versions_seen(application_id=application.pk)
    assert {v.variant.slug: v.version for v in seen.values()} == {"7b": 1, "13b": 1}

    _publish("7b", summary="A new summary of 7B.")

    seen = card_versions_seen(application_id=application.pk)
    assert {v.variant.slug: v.version for v in seen.values()} == {"7b": 1, "13b": 1}
    assert ModelCardVersion.objects.filter(variant__slug="7b").count() == 2
    assert CardVersionSeen.objects.filter(application=application).count() == 2


def test_the_applicant_sees_on_their_status_page_the_card_versions_they_were_shown(
    client, outsider
):
    application_fill(outsider, "7b", "13b")
    _publish("7b", summary="A newer summary of 7B.")
    client.force_login(outsider)

    page = client.get("/access/").content.decode()

    section = re.search(r'<p class="cards-seen" id="cards-seen">(.*?)</p>', page, re.S)
    assert section, "the status page names no card version"
    links = re.findall(r'href="([^"]+)">([^<]+)</a>', section.group(1))
    assert sorted(href for href, _text in links) == [
        "/models/13b/card/v1/",
        "/models/7b/card/v1/",
    ]
    assert all(text.endswith("card, version 1") for _href, text in links)
    for href, _text in links:
        assert client.get(href).status_code == 200


def test_a_card_version_an_application_saw_cannot_be_deleted(outsider):
    from django.db.models import ProtectedError

    application_fill(outsider, "7b")
    with pytest.raises(ProtectedError):
        ModelCardVersion.objects.get(variant__slug="7b", version=1).delete()


def test_the_catalog_model_page_and_list_link_each_card(client):
    home = client.get("/").content.decode()
    models = client.get("/models/").content.decode()
    model_page = client.get("/models/13b/").content.decode()

    for slug in [*RELEASED, "demo"]:
        assert f'href="/models/{slug}/card/"' in home
        assert f'href="/models/{slug}/card/"' in models
    assert 'href="/models/13b/card/"' in model_page


def test_the_application_form_links_the_card_of_each_size(client, outsider):
    client.force_login(outsider)

    page = client.get("/access/apply/").content.decode()

    for slug in [*RELEASED, "demo"]:
        assert re.search(rf'href="/models/{slug}/card/"', page), slug


def test_the_decision_email_links_the_card(
    applicant, reviewer, mailoutbox, django_capture_on_commit_callbacks
):
    from accounts import services

    application = applicant.applications.get()
    with django_capture_on_commit_callbacks(execute=True):
        services.application_reject(
            application=application,
            reviewer=reviewer,
            variants=list(application.requested_variants.all()),
            reason="Not a research use.",
        )

    body = mailoutbox[-1].body
    assert "/models/7b/card/" in body
    assert "/models/13b/card/" in body
