"""The playground page: a form that submits through the REST API and streams the output."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from accounts.selectors import variants_accessible
from inference.selectors import jobs_for_user
from inference.services import quota_used


@require_GET
@login_required
@ensure_csrf_cookie
def playground(request: HttpRequest) -> HttpResponse:
    from django.conf import settings

    variants = variants_accessible(user=request.user, purpose="generate")
    return render(
        request,
        "inference/playground.html",
        {
            "variants": variants,
            "jobs": jobs_for_user(user=request.user, limit=20),
            "quota_used": quota_used(user=request.user),
            "quota": settings.JOBS_TOKENS_PER_DAY,
            "max_new_tokens": settings.JOBS_MAX_NEW_TOKENS,
        },
    )
