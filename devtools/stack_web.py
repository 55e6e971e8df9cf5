"""Processes of `make run` that prepare before they serve.

python -m devtools.stack_web web PORT   migrate, wait for Redis and S3, seed the demo
                                        accounts, then serve (gunicorn; with PORTAL_DEV=1
                                        Django's server, reloading on code changes)
python -m devtools.stack_web beat ARGS  publish the demo model (slow the first time),
                                        start seeding the demo evaluations beside it, then
                                        become Celery beat
python -m devtools.stack_web serve PORT only serve (the tests prepare the database first)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import django


def _wait(what: str, check, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            check()
            return
        except Exception as exc:  # the service is still starting
            last_error = exc
            time.sleep(0.5)
    print(f"{what} did not come up within {timeout:.0f}s: {last_error}", file=sys.stderr)
    sys.exit(1)


def beat(args: list[str]) -> None:
    from django.core.management import call_command

    from core import storage

    _wait("S3", storage.ensure_bucket)
    try:
        call_command("seed_demo", only=["weights"])
    except Exception as exc:  # the portal works without the demo model; say so and go on
        print(f"Could not publish the demo model: {exc}", file=sys.stderr, flush=True)
    # The demo evaluations are scored in a process of their own (it loads torch), so beat's
    # sweeps start now; it stops with beat's process group.
    subprocess.Popen([sys.executable, "-m", "devtools.stack_web", "seed-evaluations"])
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "portal", "beat", *args])


def seed_evaluations() -> None:
    """A small task and its finished evaluation, so the evaluations page is not empty. The web
    process migrates and seeds the accounts meanwhile: wait for them a minute at most."""
    from django.core.management import call_command

    for attempt in range(30):
        try:
            call_command("seed_demo", only=["evaluations"])
            return
        except Exception as exc:  # the portal works without them; say so and go on
            if attempt == 29:
                print(f"Could not seed the demo evaluations: {exc}", file=sys.stderr, flush=True)
            time.sleep(2)


def gunicorn_argv(port: str) -> list[str]:
    """compose's web server (gunicorn, gthread workers, WhiteNoise for static files).

    Its listen backlog (2048) queues a burst of connections where Django's development
    server (backlog 10) had the kernel reset them. A short graceful timeout keeps
    `make run`'s Ctrl-C within its budget; the access log is redacted.
    """
    workers = os.environ.get("PORTAL_WEB_WORKERS", "2")
    threads = os.environ.get("PORTAL_WEB_THREADS", "8")
    return [
        *(sys.executable, "-m", "gunicorn", "portal.wsgi:application"),
        *("--bind", f"127.0.0.1:{port}", "--backlog", "2048"),
        *("--worker-class", "gthread", "--workers", workers, "--threads", threads),
        *("--timeout", "120", "--graceful-timeout", "2"),
        *("--access-logfile", "-", "--error-logfile", "-"),
        # Its default control socket is one path per user: two servers would share it.
        "--no-control-socket",
        *("--logger-class", "devtools.gunicorn_logging.RedactingLogger"),
    ]


def serve(port: str) -> None:
    """Become gunicorn on 127.0.0.1:port."""
    argv = gunicorn_argv(port)
    sys.stdout.flush()
    os.execv(argv[0], argv)


def serve_dev(port: str) -> None:
    """Django's development server, reloading on code changes, with a backlog for bursts.

    Its own backlog of 10 makes the kernel reset the connections of a burst beyond that
    (16 of 50 simultaneous clients were reset); queued, they are served a moment later.
    """
    from django.core.management import call_command
    from django.core.management.commands.runserver import Command as Runserver
    from django.core.servers.basehttp import WSGIServer

    class BurstWSGIServer(WSGIServer):
        request_queue_size = 256

    command = Runserver()
    command.server_cls = BurstWSGIServer
    call_command(command, f"127.0.0.1:{port}", use_reloader=True, use_threading=True)


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    django.setup()
    if sys.argv[1] == "beat":
        beat(sys.argv[2:])
        return
    if sys.argv[1] == "seed-evaluations":
        seed_evaluations()
        return
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
        return
    port = sys.argv[2]
    if os.environ.get("RUN_MAIN") == "true":  # the reloader's child: its parent prepared
        serve_dev(port)
        return
    from django.conf import settings
    from django.core.management import call_command

    from core import storage
    from portal.health import redis_client

    call_command("migrate", interactive=False, verbosity=0)
    call_command("createcachetable", verbosity=0)
    _wait("Redis", lambda: redis_client().ping())
    _wait("S3", storage.ensure_bucket)
    call_command("seed_demo", only=["accounts"])
    dev = os.environ.get("PORTAL_DEV") == "1"
    if not dev and not settings.DEBUG:
        call_command("collectstatic", interactive=False, verbosity=0)
    print(f"\n  The portal is up: http://127.0.0.1:{port}/   (health: /healthz)\n", flush=True)
    if dev:
        serve_dev(port)
    else:
        serve(port)


if __name__ == "__main__":
    main()
