"""The public model cards: readable by anyone, signed in or not, at stable addresses
(`/models/<size>/card/` for the newest version, `.../card/v<N>/` for one version), with each
table as CSV and JSON. Thin: load with the selectors, render with `catalog.cards`."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from catalog import charts
from catalog.cards import card_blocks, table_csv, table_json
from catalog.models import ModelCardVersion
from catalog.selectors import card_version_get, card_versions, variant_get_published


def card_context(card: ModelCardVersion, *, download_version: int | None) -> dict:
    """What `catalog/_card.html` shows for `card`; also used by the console's preview (with
    `download_version` None: an unsaved card has no downloads yet)."""
    blocks = []
    for block in card_blocks(body=card.body, tables=card.tables):
        chart = (
            charts.table_chart(block.table, highlight=card.variant.size) if block.table else None
        )
        blocks.append({"html": block.html, "table": block.table, "chart": chart})
    return {"card": card, "blocks": blocks, "download_version": download_version}


@require_GET
def card_detail(request: HttpRequest, slug: str, version: int | None = None) -> HttpResponse:
    variant = variant_get_published(slug=slug)
    card = card_version_get(variant=variant, version=version)
    latest = card_versions(variant)
    context = card_context(card, download_version=card.version)
    context.update(
        {
            "variant": variant,
            "versions": latest,
            "is_latest": bool(latest) and latest[0].version == card.version,
        }
    )
    return render(request, "catalog/card_detail.html", context)


@require_GET
def card_history(request: HttpRequest, slug: str) -> HttpResponse:
    variant = variant_get_published(slug=slug)
    versions = card_versions(variant)
    if not versions:
        raise Http404(f"{variant} has no model card.")
    return render(request, "catalog/card_history.html", {"variant": variant, "versions": versions})


@require_GET
def card_table(
    request: HttpRequest, slug: str, key: str, fmt: str, version: int | None = None
) -> HttpResponse:
    variant = variant_get_published(slug=slug)
    card = card_version_get(variant=variant, version=version)
    table = card.table(key)
    if table is None or fmt not in ("csv", "json"):
        raise Http404(f"The card of {variant} has no table {key!r} as {fmt}.")
    if fmt == "csv":
        body, content_type = table_csv(table), "text/csv; charset=utf-8"
    else:
        url = request.build_absolute_uri(card.get_absolute_url())
        body = table_json(table, variant=variant, version=card.version, url=url)
        content_type = "application/json"
    response = HttpResponse(body, content_type=content_type)
    filename = f"llama-{variant.slug}-card-v{card.version}-{key}.{fmt}"
    response["Content-Disposition"] = f'inline; filename="{filename}"'
    return response
