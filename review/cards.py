"""The console's model-card editor: staff (reviewers) edit a size's card as Markdown with its
metadata and tables, preview it exactly as the public page shows it, and save a new version
(never an edit in place; `review.card_services.card_publish` records it in the audit log)."""

from __future__ import annotations

import json

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from catalog.cards import card_content_check
from catalog.models import ModelCardVersion
from catalog.selectors import (
    card_current_versions,
    variant_get_published,
    variant_list_published,
)
from catalog.views import card_context
from core.errors import InvalidInput
from review.access import reviewer_required
from review.card_services import card_publish


def metadata_to_text(metadata: list) -> str:
    return "".join(f"{label}: {value}\n" for label, value in metadata)


class CardForm(forms.Form):
    summary = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), max_length=2000)
    metadata = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8}),
        required=False,
        help_text="One fact per line, as Label: value.",
    )
    body = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 30}),
        max_length=100_000,
        help_text="Markdown. HTML is shown as text, never run. A line [table: KEY] places "
        "the table of that key.",
    )
    tables = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 20}),
        required=False,
        help_text='JSON: a list of {"key", "title", "columns", "rows", "source", "unit", '
        '"chart" ("", "by_size" or "by_category"), "note"}. Every table cites its source.',
    )
    change_note = forms.CharField(
        max_length=300, help_text="What changed and why: shown in the card's version history."
    )

    def clean_metadata(self) -> list:
        pairs = []
        for n, line in enumerate(self.cleaned_data["metadata"].splitlines(), start=1):
            if not line.strip():
                continue
            label, sep, value = line.partition(":")
            if not sep or not label.strip() or not value.strip():
                raise forms.ValidationError(f"Line {n}: write it as Label: value.")
            pairs.append([label.strip(), value.strip()])
        return pairs

    def clean_tables(self) -> list:
        text = self.cleaned_data["tables"].strip() or "[]"
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
            ) from exc

    def clean(self):
        data = super().clean()
        if not self.errors:
            try:
                card_content_check(
                    summary=data["summary"],
                    metadata=data["metadata"],
                    body=data["body"],
                    tables=data["tables"],
                )
            except InvalidInput as exc:
                for problem in exc.extra.get("problems", [str(exc)]):
                    self.add_error(None, problem)
        return data


@require_GET
@reviewer_required
def card_list(request: HttpRequest) -> HttpResponse:
    variants = list(variant_list_published())
    current = card_current_versions(variants)
    rows = [(variant, current.get(variant.pk)) for variant in variants]
    return render(request, "review/cards.html", {"rows": rows, "section": "cards"})


@require_http_methods(["GET", "POST"])
@reviewer_required
def card_edit(request: HttpRequest, slug: str) -> HttpResponse:
    """GET: the form, filled with the newest version. POST with `action=preview`: the same
    form and the card as it would read; `action=save`: publish it as a new version."""
    variant = variant_get_published(slug=slug)
    current = variant.card_versions.order_by("-version").first()
    preview = None
    if request.method == "GET":
        initial = {"change_note": ""}
        if current is not None:
            initial.update(
                summary=current.summary,
                metadata=metadata_to_text(current.metadata),
                body=current.body,
                tables=json.dumps(current.tables, indent=2, ensure_ascii=False),
            )
        form = CardForm(initial=initial)
        status = 200
    else:
        form = CardForm(request.POST)
        valid = form.is_valid()
        if valid and request.POST.get("action") == "save":
            data = form.cleaned_data
            card = card_publish(
                variant=variant,
                editor=request.user,
                summary=data["summary"],
                metadata=data["metadata"],
                body=data["body"],
                tables=data["tables"],
                change_note=data["change_note"],
                ip=request.META.get("REMOTE_ADDR"),
            )
            messages.success(request, f"Version {card.version} of the {variant} card published.")
            return redirect(card.get_absolute_url())
        if valid:
            data = form.cleaned_data
            draft = ModelCardVersion(
                variant=variant,
                version=(current.version + 1) if current else 1,
                summary=data["summary"],
                metadata=data["metadata"],
                body=data["body"],
                tables=data["tables"],
                change_note=data["change_note"],
                created_at=timezone.now(),
            )
            preview = card_context(draft, download_version=None)
        status = 200 if valid else 400
    return render(
        request,
        "review/card_edit.html",
        {
            "variant": variant,
            "current": current,
            "form": form,
            "preview": preview,
            "section": "cards",
        },
        status=status,
    )
