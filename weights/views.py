from __future__ import annotations

import functools
import json

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accounts.authentication import require_scope, token_authenticate
from accounts.selectors import access_check, access_require_published
from catalog.selectors import (
    card_current_versions,
    variant_availability,
    variant_get_published,
    variant_list_published,
    variant_manifest,
)
from core.errors import PortalError, render_error
from weights.client_wheel import client_wheel
from weights.selectors import variant_checklist
from weights.services import download_link_use, download_links_for_slug, download_links_issue


def _client_ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def _authenticate(request: HttpRequest, scope: str = "download") -> None:
    """Session or `Authorization: Bearer llp_...`; raises PermissionDenied for a bad token
    or one without the scope. A request carrying a token gets JSON refusals."""
    result = token_authenticate(request)
    if result is not None:
        request.user, request.auth = result
    require_scope(request, scope)


def _refuse(request: HttpRequest, exc: PortalError) -> HttpResponse:
    # Scripts (they send a token) get JSON, since they cannot read a page; people get the
    # page, which says the same.
    if "Authorization" in request.headers:
        return JsonResponse(exc.as_dict(), status=exc.status_code)
    if exc.code == "anonymous" and "application/json" not in request.headers.get("Accept", ""):
        return redirect_to_login(request.get_full_path())
    return render_error(request, exc)


def _for_downloaders(view):
    """A view that serves files: authenticated by session or download-scoped token, never
    cached, and any refusal answered in the form its client reads."""

    @never_cache
    @require_GET
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            _authenticate(request)
            return view(request, *args, **kwargs)
        except PortalError as exc:
            return _refuse(request, exc)

    return wrapper


@require_GET
def variant_list(request: HttpRequest) -> HttpResponse:
    return render(request, "weights/variant_list.html", {"variants": variant_list_published()})


@require_GET
def variant_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """The model card for everyone; files, checksums and links only for those who may
    download (the one access check decides)."""
    variant = variant_get_published(slug=slug)
    context = {
        "variant": variant,
        "card": card_current_versions([variant]).get(variant.pk),
        "links": None,
        "refusal": None,
        "availability": variant_availability(variant),
        "client_wheel": client_wheel().filename,
    }
    if request.user.is_authenticated:
        decision = access_check(user=request.user, variant=variant, purpose="download")
        if decision.allowed:
            context["links"] = download_links_issue(user=request.user, variant=variant)
        else:
            context["refusal"] = decision.message
    return render(request, "weights/variant_detail.html", context)


@require_GET
def client_wheel_download(request: HttpRequest, filename: str) -> HttpResponse:
    """`/client/<wheel>`: the Python client, for `pip install` from the portal itself."""
    wheel = client_wheel()
    if filename != wheel.filename:
        raise Http404(f"This portal serves {wheel.filename}.")
    response = HttpResponse(wheel.content, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{wheel.filename}"'
    return response


@_for_downloaders
def download(request: HttpRequest, link_id: str) -> HttpResponse:
    """`/dl/<id>`: check again, record, and redirect to a fresh short-lived S3 URL."""
    redirect = download_link_use(
        link_id=link_id,
        user=request.user,
        ip=_client_ip(request),
        user_agent=request.headers.get("User-Agent", ""),
    )
    response = HttpResponseRedirect(redirect.url)
    # The signed URL must not leak to another site through a Referer header.
    response["Referrer-Policy"] = "no-referrer"
    return response


def _variant_for_download(request: HttpRequest, slug: str):
    return access_require_published(user=request.user, slug=slug, purpose="download")[0]


def _attachment(body: str, *, filename: str, content_type: str) -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@_for_downloaders
def checklist(request: HttpRequest, slug: str) -> HttpResponse:
    variant = _variant_for_download(request, slug)
    return _attachment(
        variant_checklist(variant), filename="checklist.chk", content_type="text/plain"
    )


@_for_downloaders
def manifest(request: HttpRequest, slug: str) -> HttpResponse:
    variant = _variant_for_download(request, slug)
    return _attachment(
        json.dumps(variant_manifest(variant), indent=2) + "\n",
        filename="manifest.json",
        content_type="application/json",
    )


@_for_downloaders
def download_script(request: HttpRequest, slug: str) -> HttpResponse:
    """download.sh for this researcher and size, with their current links in it."""
    variant, links = download_links_for_slug(user=request.user, slug=slug)
    base = request.build_absolute_uri("/").rstrip("/")
    body = render_to_string(
        "weights/download.sh",
        {
            "variant": variant,
            "user": request.user,
            "base": base,
            "now": timezone.now(),
            "links": [
                {
                    "file": link.file,
                    "url": base + link.get_absolute_url(),
                    "expires_at": link.expires_at,
                }
                for link in links
            ],
            "link_hours": settings.WEIGHTS_LINK_SECONDS // 3600,
        },
    )
    return _attachment(
        body, filename=f"download-{variant.slug}.sh", content_type="text/x-shellscript"
    )
