"""The playground page: a form that submits through the REST API and streams the output."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from accounts.selectors import variants_accessible
from catalog.selectors import variants_availability
from inference.selectors import jobs_for_user
from inference.services import quota_used


@require_GET
@login_required
@ensure_csrf_cookie
def playground(request: HttpRequest) -> HttpResponse:
    variants = variants_accessible(user=request.user, purpose="generate")
    availability = variants_availability(variants)
    return render(
        request,
        "inference/playground.html",
        {
            # Sizes that cannot run now are listed, disabled, with the reason.
            "choices": [(v, availability[v.slug]) for v in variants],
            "variants": variants,
            "jobs": jobs_for_user(user=request.user, limit=20),
            "quota_used": quota_used(user=request.user),
            "quota": settings.JOBS_TOKENS_PER_DAY,
            "max_new_tokens": settings.JOBS_MAX_NEW_TOKENS,
        },
    )
