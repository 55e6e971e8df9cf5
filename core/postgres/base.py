"""PostgreSQL as Django ships it, with a health check that costs no round trip.

Django's `conn_health_checks` sends `SELECT 1` before the first query of every request
that reuses a connection (so that a restarted PostgreSQL does not cost the next request on
each stale connection a 500). On the portal's hot API requests that round trip was a fifth
to a quarter of the request's CPU (`bench/request_cost.py`). A server that ends a connection
(restart, `pg_terminate_backend`, idle timeout) tells the client first: its socket turns
readable (the FATAL message, then the end of the stream). An idle connection we hold has
nothing to read otherwise (the portal does not LISTEN), so "nothing to read" says the
connection is alive as the `SELECT 1` did; anything to read, or a connection psycopg knows
to be closed or broken, is closed here and the request opens a new one.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def close_if_health_check_failed(self) -> None:
        if (
            self.pool
            or self.connection is None
            or not self.health_check_enabled
            or self.health_check_done
        ):
            return
        if not self._idle_socket_quiet():
            self.close()
        self.health_check_done = True

    def _idle_socket_quiet(self) -> bool:
        conn = self.connection
        if conn.closed or conn.broken:
            return False
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable
