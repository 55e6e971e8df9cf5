"""The connection health check (core/postgres): a connection the server ended is replaced
before the request's first query; a live one is kept, and checked without a round trip."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _next_request() -> None:
    """What Django does between two requests on a thread's persistent connection."""
    connection.close_if_unusable_or_obsolete()


def _terminate(pid: int) -> None:
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_connection_the_server_ended_is_replaced_before_the_next_query(settings):
    assert connection.health_check_enabled and connection.vendor == "postgresql"
    first = _backend_pid()
    _terminate(first)
    _next_request()

    second = _backend_pid()  # no OperationalError: a new connection answered

    assert second != first


def test_a_live_connection_is_kept_and_checked_without_a_query(monkeypatch):
    from django.db import connections

    first = _backend_pid()
    monkeypatch.setattr(
        connections["default"], "is_usable", lambda: pytest.fail("a SELECT 1 health check ran")
    )
    _next_request()

    assert _backend_pid() == first
    assert connection.health_check_done
