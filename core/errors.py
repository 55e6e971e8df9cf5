"""One place that turns domain errors into HTTP answers.

Services raise `PortalError` subclasses with a message meant for a person. The DRF exception
handler renders them (and DRF's own errors) in one JSON shape; `DomainErrorMiddleware` does
the same for plain Django views, as HTML or JSON depending on what the client asked for.

A database that cannot answer now (SQLite busy past its timeout, PostgreSQL restarting)
is a passing condition, not a bug: both paths turn `OperationalError` into a 503 with
Retry-After, so a client retries instead of seeing a 500 page.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_default_handler


class PortalError(Exception):
    """Base of every error a service raises on purpose, with an HTTP status and a code."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.extra = extra or {}

    def as_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class InvalidInput(PortalError):
    status_code = 400
    code = "invalid"


class PermissionDenied(PortalError):
    status_code = 403
    code = "forbidden"


class NotFound(PortalError):
    status_code = 404
    code = "not_found"


class Conflict(PortalError):
    status_code = 409
    code = "conflict"


class TooLarge(PortalError):
    status_code = 413
    code = "too_large"


class RateLimited(PortalError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServiceUnavailable(PortalError):
    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


logger = logging.getLogger(__name__)

# Seconds a client is asked to wait after the database was busy: long enough for the
# writers ahead of it to commit.
DATABASE_RETRY_AFTER = 2


def database_unavailable(exc: OperationalError) -> ServiceUnavailable:
    """The answer to a database error: logged in full, told to the client in one sentence."""
    logger.warning("Database unavailable, answering 503: %s", exc)
    return ServiceUnavailable(
        "The database is busy or unreachable; please retry in a moment.",
        code="database_unavailable",
        retry_after=DATABASE_RETRY_AFTER,
    )


def _headers_for(exc: PortalError) -> dict[str, str]:
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        return {"Retry-After": str(retry_after)}
    return {}


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, OperationalError):
        exc = database_unavailable(exc)
    if isinstance(exc, PortalError):
        return Response(exc.as_dict(), status=exc.status_code, headers=_headers_for(exc))
    # DRF answers Django's Http404 and PermissionDenied as its own NotFound and
    # PermissionDenied; converting them here first gives the body their (never empty) detail.
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied(*exc.args)
    response = drf_default_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, drf_exceptions.ValidationError):
        body = {
            "error": {
                "code": "invalid",
                "message": "Some fields are invalid.",
                "fields": exc.detail,
            }
        }
    else:
        detail = str(getattr(exc, "detail", "") or exc)
        code = getattr(exc, "default_code", "error")
        message = detail or f"The request failed (HTTP {response.status_code})."
        body = {"error": {"code": code, "message": message}}
    response.data = body
    return response


def wants_json(request: HttpRequest) -> bool:
    accept = request.headers.get("Accept", "")
    return request.path.startswith(("/api/", "/v1/")) or (
        "application/json" in accept and "text/html" not in accept
    )


def render_error(request: HttpRequest, exc: PortalError) -> HttpResponse:
    if wants_json(request):
        response: HttpResponse = JsonResponse(exc.as_dict(), status=exc.status_code)
    else:
        response = render(
            request,
            "portal/error.html",
            {"status": exc.status_code, "message": exc.message, "code": exc.code},
            status=exc.status_code,
        )
    for key, value in _headers_for(exc).items():
        response[key] = value
    return response


class DomainErrorMiddleware:
    """Renders a `PortalError` or a database error raised by a plain Django view instead of
    a 500. (An error raised by a middleware, e.g. while saving the session, reaches
    `handler500`, which calls `server_error_response`.)"""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, OperationalError):
            exc = database_unavailable(exc)
        if isinstance(exc, PortalError):
            return render_error(request, exc)
        return None


def server_error_response(request: HttpRequest) -> HttpResponse | None:
    """For `handler500`: the 503 answer when the error being handled is the database's."""
    exc = sys.exc_info()[1]
    if isinstance(exc, OperationalError):
        return render_error(request, database_unavailable(exc))
    return None
