"""`core.postgresql`: a kept connection's health check sends nothing while the connection
is quiet, and still finds (and replaces) a connection the server has closed."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.conf import settings
from django.db import close_old_connections, connections

pytestmark = [
    pytest.mark.django_db(transaction=True),  # requests run outside a test's transaction
    pytest.mark.skipif(
        settings.DATABASES["default"]["ENGINE"] != "core.postgresql",
        reason="the backend for PostgreSQL only (SQLite has no connection to check)",
    ),
]


def _request_pid(conn) -> int:
    """What a request does with the database: start (Django's request_started signal closes
    old connections and rearms the health check), then a query."""
    close_old_connections()
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@pytest.fixture
def conn(monkeypatch):
    conn = connections["default"]
    assert conn.settings_dict["CONN_HEALTH_CHECKS"] and conn.settings_dict["CONN_MAX_AGE"]
    conn.close()
    calls = []
    full_check = conn.is_usable

    def counted() -> bool:
        calls.append(1)
        return full_check()

    monkeypatch.setattr(conn, "is_usable", counted)
    conn.full_checks = calls
    yield conn
    conn.close()


def test_a_quiet_kept_connection_is_reused_without_a_round_trip(conn):
    pid = _request_pid(conn)  # connects: nothing to check yet
    assert [_request_pid(conn) for _ in range(3)] == [pid] * 3
    assert conn.health_check_enabled and conn.full_checks == []  # no SELECT 1 was sent


def test_a_connection_the_server_closed_is_replaced_before_the_request_uses_it(conn):
    pid = _request_pid(conn)
    dsn = conn.connection.info.dsn
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
        for _ in range(100):  # the server sends its error and closes the socket
            if other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
                time.sleep(0.02)
    new_pid = _request_pid(conn)  # without a check this query would fail
    assert new_pid != pid
    assert conn.full_checks == [1]  # the readable socket sent it to Django's own check


def test_a_connection_inside_a_transaction_is_never_taken_as_quiet(conn):
    _request_pid(conn)
    conn.connection.execute("BEGIN")  # left open below Django, as a broken handler might
    conn.health_check_done = False
    assert conn._quiet() is False
    conn.connection.execute("ROLLBACK")
    assert conn._quiet() is True
