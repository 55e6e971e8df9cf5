"""The web process of `make run` on its embedded SQLite database, for tests that need it live.

`EmbeddedStack.prepare()` migrates a fresh database under `var/` and seeds what the tests
act on (in a subprocess, so the test run's own PostgreSQL settings stay untouched); `serve()`
serves it the way `make run` does (`devtools.stack_web serve`: gunicorn) and keeps its
log, with a Redis of its own (the jobs it queues must not reach the suite's workers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools.services import free_port, redis_command, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parents[2]

# Reviewers' decisions need applications waiting in the queue, one size each.
APPLICANTS = 3


def _embedded_env(var: Path, redis_port: int, extra: dict[str, str]) -> dict[str, str]:
    """The environment of `make run` (no DATABASE_URL: SQLite under var/), debug on."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "DATABASE_", "REDIS_", "CELERY_", "S3_", "PORTAL_"))
    }
    env.update(
        {
            "DJANGO_DEBUG": "1",
            "PORTAL_VAR_DIR": str(var),
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


_SETUP = r"""
import json, secrets
import django
django.setup()
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django.core.management import call_command

from accounts import demo, services
from accounts.models import User
from catalog.models import ModelVariant

call_command("migrate", interactive=False, verbosity=0)
call_command("createcachetable", verbosity=0)
call_command("seed_demo", only=["accounts"])

def session(user):
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return store.session_key

applications = []
for i in range(APPLICANTS):
    user = demo._user(f"applicant{i}@uni{i}.example.edu", "Ann", f"Applicant{i}")  # verified
    application = services.application_start(user=user)
    services.application_save_draft(
        application=application, user=user,
        data={"full_name": f"Ann Applicant{i}", "affiliation": f"University {i}",
              "organization_type": "academic", "country": "NL", "position": "Researcher",
              "use_case": f"Study {i}: " + secrets.token_hex(8) + " " + "We measure how "
              "well small language models follow instructions in Dutch and Frisian, on "
              "benchmarks we write ourselves, and publish the code and results openly. "
              "Nothing we do with the model is commercial, and the weights stay on our "
              "university cluster."},
        variants=[ModelVariant.objects.get(slug="7b")],
    )
    services.application_submit(application=application, user=user)
    applications.append(application.pk)

researcher = User.objects.get(email=demo.RESEARCHER)
_, key = services.token_create(user=researcher, name="jobs", scopes=["generate"])
print("SETUP " + json.dumps({
    "applications": applications,
    "token": key,
    "sessions": {
        "researcher": session(researcher),
        "reviewer": session(User.objects.get(email=demo.REVIEWER)),
        "admin": session(User.objects.get(email=demo.ADMIN)),
    },
}))
"""


class EmbeddedStack:
    """A private Redis, then `prepare()` (the database), then `serve()` (the web process)."""

    def __init__(self, tmp_path: Path, **extra_env: str):
        self.var = tmp_path / "var"
        self.var.mkdir(parents=True, exist_ok=True)
        self.log = tmp_path / "server.log"
        redis_port = free_port()
        self.env = _embedded_env(self.var, redis_port, extra_env)
        self.redis = subprocess.Popen(
            redis_command(port=redis_port, data_dir=self.var / "redis"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.web: subprocess.Popen | None = None
        self.port = free_port()
        wait_for_port(redis_port, timeout=30, proc=self.redis)

    def prepare(self) -> dict:
        """Migrate and seed the database; returns sessions, a token, application ids."""
        code = f"APPLICANTS = {APPLICANTS}\n{_SETUP}"
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**self.env, "DJANGO_SETTINGS_MODULE": "portal.settings"},
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        line = next(x for x in result.stdout.splitlines() if x.startswith("SETUP "))
        return json.loads(line.removeprefix("SETUP "))

    def serve(self, timeout: float = 60) -> None:
        """Start the web process as `make run` does and wait until it answers."""
        with open(self.log, "ab") as out:
            self.web = subprocess.Popen(
                [sys.executable, "-m", "devtools.stack_web", "serve", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.web.poll() is None, self.output()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.url}/accounts/login/", timeout=5):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        raise AssertionError(f"the server did not answer within {timeout}s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.web is not None:
            stop_process(self.web, grace=5)
        stop_process(self.redis, grace=5)
