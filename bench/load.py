"""32 concurrent clients against gunicorn with PostgreSQL on loopback (prints; exits 1 on any
error).

    .venv/bin/python bench/load.py [--clients 32] [--phase-seconds 15] [--processes 4]

The server is `make run`'s gunicorn (devtools/stack_web.py: gthread, PORTAL_WEB_WORKERS
workers, default 2, of 8 threads) serving the portal, plus one bare view (`/bench/bare`, an
HttpResponse through the same middleware) as the trivial reference. It runs on a scratch
PostgreSQL database (`bench_portal_load` on DATABASE_URL's server), REDIS_URL's Redis
(default db 7 of the machine's; the bench flushes it) and a SeaweedFS of its own (the demo
checkpoint's tokenizer counts prompt tokens at submission). No worker runs the jobs: they
stay queued (a worker's presence is announced so that the size counts as served); this
measures the web tier.

Each client is a user of its own with a token (`download`, `generate`), a kept-alive
connection, and requests one after another. Phases of `--phase-seconds` each, all clients
doing one kind of request (after a short warm-up): the bare view, download link issuance
(GET /api/v1/models/demo/links), job submission (POST /api/v1/jobs, one short prompt, 4 new
tokens), status polling (GET /api/v1/jobs/<id>), the bare view again, all three mixed, and
the bare view a third time. A second reference, `/bench/bare-db`, is the bare view plus one
`SELECT 1`: what a database round trip costs on the machine at the time. A third,
`/bench/bare-api`, is an empty DRF view behind the portal's token authentication: the floor
every API request pays before doing anything of its own. A fourth, `/bench/bare-submit`,
adds what any synchronous submission must do: lock the user's row, write one row, COMMIT,
push one message to Redis (no validation, access check, limits or Celery). Last, each
request by one client alone (4 s each).
Printed per phase: requests, errors (anything but the expected status, or no answer),
throughput, p50 and p99 latency, and throughput as a ratio to the bare view's (the median
of its three phases; goal >= 0.5 for links and submissions). The load generator runs in
`--processes` processes on the same machine, so it shares the CPU with the server: the
ratios compare like with like, the absolute figures are the machine's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


DB_NAME = "bench_portal_load"
EXPECTED = {
    "bare": 200,
    "bare-db": 200,
    "bare-api": 200,
    "bare-submit": 201,
    "links": 200,
    "submit": 201,
    "status": 200,
}


# --- The server side: the portal's URLs plus a bare view (gunicorn imports this module) -------


def _bare(request):
    from django.http import HttpResponse

    return HttpResponse(b"ok", content_type="text/plain")


def _bare_db(request):
    """The bare view plus one database round trip (SELECT 1): what one query costs here."""
    from django.db import connection
    from django.http import HttpResponse

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return HttpResponse(b"ok", content_type="text/plain")


def _bare_api(request):
    """The floor every API request pays before its own work: DRF's request handling with the
    portal's token authentication (one query: the token and its user), answering JSON."""
    global _BARE_API
    if _BARE_API is None:
        from rest_framework.response import Response
        from rest_framework.views import APIView

        from accounts.authentication import TokenAuthentication

        class BareApi(APIView):
            authentication_classes = [TokenAuthentication]

            def get(self, request):
                return Response({"ok": True})

        _BARE_API = BareApi.as_view()
    return _BARE_API(request)


_BARE_API = None
_BARE_SUBMIT = None


def create_bare_submit_table() -> None:
    """The table `/bench/bare-submit` writes to (load.py and request_cost.py call this once,
    before any request)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS bench_bare_submission "
            "(id uuid PRIMARY KEY, owner_id bigint NOT NULL, body text NOT NULL)"
        )


def _bare_submit(request):
    """The least a synchronous submission does, and nothing else: `bare-api`, then in one
    transaction the user's row locked and one row written (both prepared statements), and
    after the COMMIT one message pushed to Redis on a kept client. No validation, access
    check, limits or Celery: the floor under what job submission can cost in this stack."""
    global _BARE_SUBMIT
    if _BARE_SUBMIT is None:
        import json
        import uuid

        import redis
        from django.conf import settings
        from django.db import transaction
        from rest_framework.response import Response
        from rest_framework.views import APIView

        from accounts.authentication import TokenAuthentication
        from core import rows

        queue = redis.Redis.from_url(settings.CELERY_BROKER_URL)

        class BareSubmit(APIView):
            authentication_classes = [TokenAuthentication]

            def post(self, request):
                job_id = uuid.uuid4()
                with transaction.atomic():
                    rows.fetch(
                        "SELECT 1 FROM accounts_user WHERE id = %s FOR UPDATE", [request.user.pk]
                    )
                    rows.fetch(
                        "INSERT INTO bench_bare_submission (id, owner_id, body) "
                        "VALUES (%s, %s, %s) RETURNING id",
                        [job_id, request.user.pk, json.dumps(request.data)],
                    )
                    transaction.on_commit(lambda: queue.lpush("bench-bare-submit", str(job_id)))
                return Response({"id": str(job_id)}, status=201)

        _BARE_SUBMIT = BareSubmit.as_view()
    return _BARE_SUBMIT(request)


# As DRF's own views are (`APIView.as_view`): CSRF is a session-cookie concern, and Django's
# middleware looks at the function the URL names, this one.
_bare_submit.csrf_exempt = True


def __getattr__(name: str):
    # `urlpatterns`, read by Django's resolver once settings are loaded (ROOT_URLCONF below).
    if name == "urlpatterns":
        from django.urls import include, path

        return [
            path("bench/bare", _bare),
            path("bench/bare-db", _bare_db),
            path("bench/bare-api", _bare_api),
            path("bench/bare-submit", _bare_submit),
            path("", include("portal.urls")),
        ]
    raise AttributeError(name)


def wsgi():
    """gunicorn's app factory: `bench.load:wsgi()`."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application

    settings.ROOT_URLCONF = "bench.load"
    return get_wsgi_application()


# --- The clients ---------------------------------------------------------------------------------


def _request(session, url: str, kind: str, job_id: str | None):
    if kind in ("bare", "bare-db", "bare-api"):
        return session.get(f"{url}/bench/{kind}", timeout=30)
    if kind == "bare-submit":
        body = {"model": "demo", "prompt": "The model", "max_new_tokens": 4}
        return session.post(f"{url}/bench/bare-submit", json=body, timeout=30)
    if kind == "links":
        return session.get(f"{url}/api/v1/models/demo/links", timeout=30)
    if kind == "submit":
        body = {"model": "demo", "prompt": "The model", "max_new_tokens": 4}
        return session.post(f"{url}/api/v1/jobs", json=body, timeout=30)
    return session.get(f"{url}/api/v1/jobs/{job_id}", timeout=30)


def _client_process(args) -> dict:
    """One process's share of the clients, through one phase."""
    import requests

    url, tokens, kinds, warmup, seconds = args
    results: dict[str, list] = {k: [] for k in kinds}
    errors: dict[str, list[str]] = {k: [] for k in kinds}
    lock = threading.Lock()
    start_at = time.monotonic() + 0.5  # every thread starts together
    measure_from = start_at + warmup
    stop_at = measure_from + seconds

    def client(index: int, token: str) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        job = session.post(
            f"{url}/api/v1/jobs", json={"model": "demo", "prompt": "Hi", "max_new_tokens": 1}
        )
        job_id = job.json()["id"] if job.status_code == 201 else None
        turn = index
        while time.monotonic() < start_at:
            time.sleep(0.005)
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            kind = kinds[turn % len(kinds)]
            turn += 1
            began = time.perf_counter()
            try:
                response = _request(session, url, kind, job_id)
                status, problem = response.status_code, None
                response.content  # noqa: B018 - read the whole answer
            except requests.RequestException as exc:
                status, problem = None, type(exc).__name__
            took = time.perf_counter() - began
            if now < measure_from:
                continue
            with lock:
                results[kind].append(took)
                if status != EXPECTED[kind]:
                    errors[kind].append(problem or f"HTTP {status}")
        session.close()

    threads = [
        threading.Thread(target=client, args=(i, t), daemon=True) for i, t in enumerate(tokens)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"results": results, "errors": errors}


def run_phase(pool, url: str, tokens: list[str], kinds: list[str], ns, seconds=None) -> dict:
    seconds = seconds or ns.phase_seconds
    shares = [s for s in (tokens[i :: ns.processes] for i in range(ns.processes)) if s]
    parts = pool.map(_client_process, [(url, share, kinds, ns.warmup, seconds) for share in shares])
    merged: dict[str, dict] = {}
    for kind in kinds:
        times = sorted(t for p in parts for t in p["results"][kind])
        errs = [e for p in parts for e in p["errors"][kind]]
        merged[kind] = {"times": times, "errors": errs, "seconds": seconds}
    return merged


def _pct(times: list[float], q: float) -> float:
    if not times:
        return float("nan")
    return times[min(len(times) - 1, int(q * len(times)))] * 1000


# --- Setup and main ----------------------------------------------------------------------------


def _wait_http(url: str, timeout: float = 60) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/bench/bare", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError("gunicorn did not answer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--phase-seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--processes", type=int, default=4)
    ns = parser.parse_args()

    from bench._harness import WebTier
    from devtools.services import free_port, stop_process
    from devtools.stack_web import gunicorn_argv

    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    tier = WebTier(tmp, db_name=DB_NAME, redis_db=7, name="load")
    server = None
    phases: list[tuple[str, dict]] = []
    try:
        tier.start()
        tokens = tier.researchers(ns.clients)
        create_bare_submit_table()

        port = free_port()
        argv = gunicorn_argv(str(port))
        argv[argv.index("portal.wsgi:application")] = "bench.load:wsgi()"
        with open(tmp / "gunicorn.log", "wb") as log:
            server = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        _wait_http(url)
        web_workers = os.environ.get("PORTAL_WEB_WORKERS", "2")
        web_threads = os.environ.get("PORTAL_WEB_THREADS", "8")
        print(
            f"gunicorn: {web_workers} workers x {web_threads} threads; {ns.clients} clients in "
            f"{ns.processes} processes; {ns.phase_seconds:.0f} s per phase",
            flush=True,
        )
        load_before = os.getloadavg()
        context = multiprocessing.get_context("fork")
        with context.Pool(ns.processes) as pool:
            plan = [
                ("bare", ["bare"]),
                ("bare-db", ["bare-db"]),
                ("bare-api", ["bare-api"]),
                ("bare-submit", ["bare-submit"]),
                ("links", ["links"]),
                ("submit", ["submit"]),
                ("status", ["status"]),
                ("bare", ["bare"]),
                ("mixed", ["links", "submit", "status"]),
                ("bare", ["bare"]),
            ]
            for name, kinds in plan:
                print(f"phase: {name} ...", flush=True)
                phases.append((name, run_phase(pool, url, tokens, kinds, ns)))
            # One client alone: each request's own cost, without queueing behind others.
            for kind in ("bare", "bare-db", "bare-api", "bare-submit", "links", "submit", "status"):
                phases.append(("1 client", run_phase(pool, url, tokens[:1], [kind], ns, 4.0)))
        load_after = os.getloadavg()
    finally:
        if server is not None:
            stop_process(server, grace=5)
        tier.stop()

    bare_rates = [
        len(p["bare"]["times"]) / p["bare"]["seconds"] for name, p in phases if name == "bare"
    ]
    # The bare view's phases of one run differed by up to 50% on these shared cores: the
    # median of three (start, middle, end) is what the ratios divide by.
    bare = statistics.median(bare_rates)
    print(
        f"\n{ns.clients} clients, {os.cpu_count()} cores shared with the load generator; load "
        f"average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)"
    )
    print(f"{'phase':8} {'request':8} {'count':>7} {'errors':>6} {'req/s':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'vs bare':>8}")  # fmt: skip
    errors = 0
    for name, phase in phases:
        for kind, data in phase.items():
            rate = len(data["times"]) / data["seconds"]
            errors += len(data["errors"])
            print(
                f"{name:8} {kind:8} {len(data['times']):7d} {len(data['errors']):6d} "
                f"{rate:8.1f} {_pct(data['times'], 0.5):8.1f} {_pct(data['times'], 0.99):8.1f} "
                f"{rate / bare:8.2f}"
            )
            if data["errors"]:
                print(f"         errors: {sorted(set(data['errors']))[:5]}")
    print(f"bare view: {', '.join(f'{r:.1f}' for r in bare_rates)} req/s in its phases")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
