"""What one API request costs the machine, in the portal's Python and in PostgreSQL, against
the bare view (prints; no HTTP, no load generator):

    .venv/bin/python bench/request_cost.py [--requests 400] [--rounds 3] [--profile links]
        [--sort tottime|ncalls] [--callees PATTERN] [--callers PATTERN] [--sql links] [--plans]
        [--django-health-check]

`bench/load.py` measures throughput under 32 clients, where the load generator, gunicorn's
HTTP handling and the other requests share the 2 cores, and where a run moves by a third
from the last. This measures each request alone through Django's test client (the same
middleware, views and queries) and counts CPU seconds, not wall time: this process's
(`time.process_time`) plus those of the PostgreSQL backend serving its connection (read from
/proc). CPU seconds hardly move with other work on the machine, so a change to a view shows
here at once. Same setup as load.py: the scratch database `bench_portal_request_cost`, a
SeaweedFS of its own, the demo checkpoint published, one approved researcher with a token.

Printed per request kind (median of `--rounds` rounds, interleaved): queries, wall ms,
Python CPU ms, PostgreSQL CPU ms, and the total as a multiple of the bare view's.
`--profile KIND`: cProfile's top functions for that request (`--sort ncalls` orders them by
calls, a count that other work on the machine does not move; `--callees`/`--callers` add
what the functions matching PATTERN call / are called by). `--sql KIND`: the request's
queries. `--plans`: how often PostgreSQL planned each prepared statement afresh (custom) or
reused its plan (generic). `--django-health-check`: Django's own health check (a `SELECT 1` per
request) instead of `core.postgresql`'s, for an A/B of the two.

How the figures relate to load.py's ratios (fitted on 2026-12-07 runs): a request's load
ratio is about (bare + O) / (cost + O), with O about 1 ms of HTTP and load-generator work
per request on this machine; for a ratio of 0.5 a request may cost about 1.4 ms here.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._harness import WebTier  # noqa: E402
from bench.load import create_bare_submit_table  # noqa: E402

DB_NAME = "bench_portal_request_cost"
KINDS = ("bare", "bare-api", "bare-submit", "links", "submit", "status")


def _backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the PostgreSQL backend process `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=KINDS)
    parser.add_argument("--sort", choices=("cumulative", "tottime", "ncalls"), default="cumulative")
    parser.add_argument("--callees", metavar="PATTERN")
    parser.add_argument("--callers", metavar="PATTERN")
    parser.add_argument("--sql", choices=KINDS)
    parser.add_argument("--plans", action="store_true")
    parser.add_argument("--django-health-check", action="store_true")
    ns = parser.parse_args()

    tier = WebTier(
        Path(tempfile.mkdtemp(prefix="bench-cost-")), db_name=DB_NAME, redis_db=8, name="cost"
    )
    try:
        tier.start()
        import logging

        from django.conf import settings
        from django.db import close_old_connections, connection, connections
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        logging.disable(logging.INFO)  # the audit log's lines
        [key] = tier.researchers(1)

        settings.ROOT_URLCONF = "bench.load"  # the portal's URLs plus /bench/bare ...
        # One connection for the whole run: its backend's CPU is what is read from /proc (a
        # reconnect after DATABASE_CONN_MAX_AGE would start a process under another pid).
        connection.close()
        connection.settings_dict["CONN_MAX_AGE"] = None
        if ns.django_health_check:
            from django.db.backends.postgresql.base import DatabaseWrapper

            check = DatabaseWrapper.close_if_health_check_failed
            connection.close_if_health_check_failed = check.__get__(connections["default"])
        create_bare_submit_table()
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
        job = client.post(
            "/api/v1/jobs", {"model": "demo", "prompt": "Hi", "max_new_tokens": 1},
            content_type="application/json",
        ).json()  # fmt: skip
        body = {"model": "demo", "prompt": "The model", "max_new_tokens": 4}
        requests = {
            "bare": (lambda: client.get("/bench/bare"), 200),
            # DRF with the token's authentication and nothing else: every API request's floor.
            "bare-api": (lambda: client.get("/bench/bare-api"), 200),
            # bare-api plus a row lock, one INSERT, COMMIT and a Redis push: submission's floor.
            "bare-submit": (
                lambda: client.post("/bench/bare-submit", body, content_type="application/json"),
                201,
            ),
            "links": (lambda: client.get("/api/v1/models/demo/links"), 200),
            "submit": (
                lambda: client.post("/api/v1/jobs", body, content_type="application/json"),
                201,
            ),
            "status": (lambda: client.get(f"/api/v1/jobs/{job['id']}"), 200),
        }
        queries = {}
        for kind, (call, expected) in requests.items():
            for _ in range(20):  # warm: imports, the tokenizer, connections
                response = call()
                assert response.status_code == expected, (kind, response.content[:300])
            with CaptureQueriesContext(connection) as captured:
                call()
            queries[kind] = len(captured.captured_queries)
            if ns.sql == kind:
                for query in captured.captured_queries:
                    print(query["sql"], end="\n\n")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]

        figures: dict[str, list[tuple[float, float, float]]] = {k: [] for k in KINDS}
        for _ in range(ns.rounds):
            for kind in KINDS:
                call = requests[kind][0]
                wall, cpu, pg = time.perf_counter(), time.process_time(), _backend_cpu(backend)
                for _ in range(ns.requests):
                    close_old_connections()  # what the WSGI handler does at each request's
                    call()  # start (Django's test client skips it): the health check rearms
                figures[kind].append(
                    (
                        (time.perf_counter() - wall) / ns.requests * 1000,
                        (time.process_time() - cpu) / ns.requests * 1000,
                        (_backend_cpu(backend) - pg) / ns.requests * 1000,
                    )
                )
        load = os.getloadavg()[0]
        print(f"{ns.requests} requests x {ns.rounds} rounds each; load average {load:.2f}")
        print(f"{'request':8} {'queries':>7} {'wall ms':>8} {'python':>8} {'postgres':>8} "
              f"{'total':>8} {'x bare':>7}")  # fmt: skip
        medians = {
            kind: [statistics.median(f[i] for f in figures[kind]) for i in range(3)]
            for kind in KINDS
        }
        bare = medians["bare"][1] + medians["bare"][2]
        for kind in KINDS:
            wall, cpu, pg = medians[kind]
            print(
                f"{kind:8} {queries[kind]:7d} {wall:8.2f} {cpu:8.2f} {pg:8.2f} {cpu + pg:8.2f} "
                f"{(cpu + pg) / bare:7.1f}"
            )
        if ns.plans:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT generic_plans, custom_plans,"
                    " regexp_replace(statement, '\\s+', ' ', 'g')"
                    " FROM pg_prepared_statements ORDER BY custom_plans DESC"
                )
                print("generic custom statement")
                for generic, custom, statement in cursor.fetchall():
                    print(f"{generic:7d} {custom:6d} {statement[:100]}")
        if ns.profile:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(ns.requests):
                requests[ns.profile][0]()
            profile.disable()
            out = io.StringIO()
            stats = pstats.Stats(profile, stream=out).sort_stats(ns.sort)
            print(f"{ns.profile}: {stats.total_calls / ns.requests:.0f} Python calls per request")
            stats.print_stats(40)
            if ns.callees:
                stats.print_callees(ns.callees)
            if ns.callers:
                stats.print_callers(ns.callers)
            print(out.getvalue())
    finally:
        tier.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
