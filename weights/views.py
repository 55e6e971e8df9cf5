from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from weights.selectors import variant_get_published, variant_list_published


@require_GET
def variant_list(request: HttpRequest) -> HttpResponse:
    return render(request, "weights/variant_list.html", {"variants": variant_list_published()})


@require_GET
def variant_detail(request: HttpRequest, slug: str) -> HttpResponse:
    variant = variant_get_published(slug=slug)
    return render(request, "weights/variant_detail.html", {"variant": variant})
