"""Django's PostgreSQL backend with a health check that costs no round trip while the
connection is quiet (settings.py selects it as the ENGINE for postgres:// URLs).

Django's CONN_HEALTH_CHECKS sends `SELECT 1` before the first query of every request that
reuses a kept connection: one more round trip than the request's own queries (a token
lookup's PostgreSQL CPU nearly doubled; bench/request_cost.py). Here the check first asks
the kernel whether the idle connection's socket has anything to read, without blocking:
when the server closed the connection or sent anything since the last answer (a restart,
`pg_terminate_backend`, an idle timeout: each sends an error and closes), the socket is
readable and Django's own check runs and reconnects as before. A quiet socket, in a
connection that is idle outside a transaction, is taken as healthy. What neither check can
see at once (a peer that vanished without closing) fails the request's first query as it
would fail Django's `SELECT 1`; the connection is then closed at the request's end.
"""

from __future__ import annotations

import select

import psycopg
from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
    def close_if_health_check_failed(self) -> None:
        if (
            self.connection is not None
            and self.health_check_enabled
            and not self.health_check_done
            and self._quiet()
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def _quiet(self) -> bool:
        """Idle, outside a transaction, and nothing to read on the socket."""
        pgconn = self.connection.pgconn
        if pgconn.status != pq.ConnStatus.OK:
            return False
        if pgconn.transaction_status != pq.TransactionStatus.IDLE:
            return False
        try:
            poller = select.poll()
            poller.register(pgconn.socket, select.POLLIN | select.POLLPRI)
            return not poller.poll(0)  # any event (data, hang-up, error): check properly
        except (OSError, ValueError, psycopg.Error):  # no socket: let Django's check decide
            return False
