"""What the portal benchmarks share: a scratch database, the WSGI app on a local port, and a
Celery worker serving the demo size's queue. Import after `DJANGO_SETTINGS_MODULE` and the
benchmark's environment are set."""

from __future__ import annotations

import os
import signal
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


class WebTier:
    """What the web-tier benchmarks (load.py, request_cost.py) run against: a scratch
    database, REDIS_URL's Redis (default: db `redis_db`, flushed), a SeaweedFS of their own
    with the demo checkpoint published (submissions count prompt tokens with its tokenizer),
    the limits lifted so that no request is refused for volume, and a worker's presence
    announced for the demo size (no worker runs: jobs stay queued). `start()` sets
    DJANGO_SETTINGS_MODULE, the environment and Django up in this process."""

    def __init__(self, tmp: Path, *, db_name: str, redis_db: int, name: str, **settings: str):
        from devtools.services import SeaweedConfig

        self.tmp, self.name = tmp, name
        self.env = environment(
            db_name=db_name,
            redis_url=os.environ.get("REDIS_URL", f"redis://127.0.0.1:6379/{redis_db}"),
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost,testserver",
            JOBS_MAX_ACTIVE_PER_USER="1000000",
            JOBS_TOKENS_PER_DAY="1000000000",
            WEIGHTS_LINK_MAX_USES="1000000",
            WORKER_PRESENCE_SECONDS="3600",
            JOBS_MODEL_CACHE_DIR=str(tmp / "models"),
            PORTAL_VAR_DIR=str(tmp / "var"),
            **settings,
        )
        secret = uuid.uuid4().hex
        self.s3 = SeaweedConfig.on_free_ports(tmp / "s3", access_key=name, secret_key=secret)
        self.env.update(self.s3.env(bucket=name))
        self.seaweed = None

    def start(self) -> None:
        from devtools.services import start_seaweed

        # `timeout` and `kill` send SIGTERM: leave through the caller's `finally`, which stops
        # the servers this bench started (they run in sessions of their own and outlived it).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        os.environ.update(self.env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
        database(self.env["DATABASE_URL"], create=True)
        self.seaweed = start_seaweed(self.s3, log_path=self.tmp / "weed.log", timeout=120)
        import django

        django.setup()
        import redis
        from django.core.management import call_command

        redis.Redis.from_url(self.env["REDIS_URL"]).flushdb()
        call_command("migrate", verbosity=0)
        from catalog.models import ModelVariant
        from core import storage, workers
        from inference.llama.demo import build_demo_checkpoint
        from weights.services import variant_publish

        storage.ensure_bucket(wait=60)
        print("building and publishing the demo checkpoint ...", flush=True)
        build_demo_checkpoint(self.tmp / "demo", steps=5, seed=0)
        variant_publish(variant=ModelVariant.objects.get(slug="demo"), directory=self.tmp / "demo")
        workers.announce(node=f"{self.name}@bench", queues=["gpu.demo"])

    def researchers(self, count: int) -> list[str]:
        """Tokens (download, generate) of `count` approved researchers, one each."""
        from accounts.services import token_create
        from accounts.tests.factories import UserFactory, grant_access

        tokens = []
        for i in range(count):
            user = UserFactory(email=f"{self.name}{i}@uni.example.edu")
            grant_access(user, "demo")
            _, key = token_create(user=user, name=self.name, scopes=["download", "generate"])
            tokens.append(key)
        return tokens

    def stop(self) -> None:
        import redis
        from django.db import connections

        from devtools.services import stop_process

        redis.Redis.from_url(self.env["REDIS_URL"]).flushdb()  # the queued jobs' messages
        connections.close_all()
        if self.seaweed is not None:
            stop_process(self.seaweed, grace=1)
        database(self.env["DATABASE_URL"], create=False)
