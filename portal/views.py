from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from catalog.selectors import variant_list_published
from core.errors import server_error_response, wants_json
from portal.health import run_checks


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/home.html", {"variants": variant_list_published()})


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks = run_checks()
    down = sorted(name for name, result in checks.items() if result["status"] != "ok")
    body = {"status": "ok" if not down else "down", "down": down, "checks": checks}
    return JsonResponse(body, status=503 if down else 200)


def error_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error_page(request, 404, "There is nothing at this address.")


def error_403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error_page(request, 403, "You do not have access to this page.")


def error_400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error_page(request, 400, "The request could not be understood.")


def error_500(request: HttpRequest) -> HttpResponse:
    # A database error raised outside a view (a middleware saving the session) lands here.
    busy = server_error_response(request)
    if busy is not None:
        return busy
    return _error_page(
        request, 500, "Something went wrong on our side. It has been logged; please try again."
    )


def _error_page(request: HttpRequest, status: int, message: str) -> HttpResponse:
    if wants_json(request):
        return JsonResponse({"error": {"code": str(status), "message": message}}, status=status)
    # A bare template with no context processors, so an error page never fails in turn.
    return render(
        request, "portal/error.html", {"status": status, "message": message}, status=status
    )
