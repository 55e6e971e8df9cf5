"""What the portal benchmarks share: a scratch database, the WSGI app on a local port, and a
Celery worker serving the demo size's queue. Import after `DJANGO_SETTINGS_MODULE` and the
benchmark's environment are set."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent


def environment(*, db_name: str, redis_url: str, **jobs: str) -> dict[str, str]:
    """The portal's settings for a benchmark's own processes: the scratch database `db_name`
    on the server DATABASE_URL names, `redis_url` as cache and broker, production settings
    minus HTTPS (the benches speak plain HTTP on loopback), mail kept in memory, quiet logs;
    then the benchmark's own JOBS_* and other settings."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/portal")
    return {
        "DATABASE_URL": urlunsplit(urlsplit(base)._replace(path=f"/{db_name}")),
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "DJANGO_SECRET_KEY": "bench-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DJANGO_SESSION_COOKIE_SECURE": "0",
        "DJANGO_CSRF_COOKIE_SECURE": "0",
        "DJANGO_SECURE_HSTS_SECONDS": "0",
        "DJANGO_SECURE_PROXY_SSL_HEADER": "0",
        "DJANGO_STATICFILES_MANIFEST": "0",
        "DJANGO_LOG_LEVEL": "WARNING",
        "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        **jobs,
    }


def database(url: str, *, create: bool) -> None:
    """Drop the database `url` names and, with `create`, make it again empty."""
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')


class Portal:
    """The WSGI app on a local port, in threads of this process."""

    def __init__(self) -> None:
        from django.core.handlers.wsgi import WSGIHandler
        from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args) -> None:
                pass

        self.server = ThreadedWSGIServer(("127.0.0.1", 0), Quiet)
        self.server.set_app(WSGIHandler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    from portal.celery import app

    name = f"bench-{uuid.uuid4().hex[:6]}@localhost"
    command = [
        sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", "gpu.demo", "-n", name,
        "-c", "1", "-P", "prefork", "--without-gossip", "--without-mingle", "-l", "WARNING",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log_path.read_text()[-2000:]}")
        if app.control.ping(destination=[name], timeout=0.5):
            return proc
    raise TimeoutError("worker did not start")
