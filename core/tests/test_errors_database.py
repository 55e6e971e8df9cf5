"""A database that cannot answer now is a 503 with Retry-After, never a 500 page."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from django.test import Client


def _locked(*args, **kwargs):
    raise OperationalError("database is locked")


@pytest.mark.django_db
def test_an_api_caller_gets_json_503_with_retry_after(client, researcher, monkeypatch):
    monkeypatch.setattr("inference.api.variants_accessible", _locked)
    client.force_login(researcher)

    response = client.get("/api/v1/models")

    assert response.status_code == 503
    assert response["Retry-After"].isdigit()
    error = response.json()["error"]
    assert error["code"] == "database_unavailable"
    assert "retry" in error["message"]
    assert "locked" not in error["message"]  # the detail goes to the log, not the client


@pytest.mark.django_db
def test_a_page_gets_a_503_page(client, monkeypatch):
    monkeypatch.setattr("portal.views.variant_list_published", _locked)

    response = client.get("/", HTTP_ACCEPT="text/html")

    assert response.status_code == 503
    assert response["Retry-After"].isdigit()
    assert b"please retry in a moment" in response.content
    assert response["Content-Type"].startswith("text/html")


class LockedMiddleware:
    """Stands for a middleware whose own query fails (session, messages, allauth)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        _locked()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("accept", "content_type"),
    [("application/json", "application/json"), ("text/html", "text/html")],
)
def test_a_database_error_in_a_middleware_is_a_503_too(settings, accept, content_type):
    settings.MIDDLEWARE = [f"{__name__}.LockedMiddleware", *settings.MIDDLEWARE]
    client = Client(raise_request_exception=False)

    response = client.get("/models/", HTTP_ACCEPT=accept)

    assert response.status_code == 503
    assert response["Content-Type"].startswith(content_type)
    assert response["Retry-After"].isdigit()


@pytest.mark.django_db
def test_other_errors_stay_500(researcher, monkeypatch):
    client = Client(raise_request_exception=False)
    monkeypatch.setattr("portal.views.variant_list_published", lambda: 1 / 0)

    response = client.get("/", HTTP_ACCEPT="text/html")

    assert response.status_code == 500
