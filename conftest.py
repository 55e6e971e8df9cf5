"""Test harness: real services for the whole suite.

- PostgreSQL and Redis: the machine's own (`make test` starts them if they are stopped).
- S3: a private SeaweedFS on free ports, started once per run by the `s3` fixture.
- Celery: real worker processes started by `celery_worker`, talking to the test database.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test.utils import override_settings

from devtools.services import SeaweedConfig, start_seaweed, stop_process
from portal.tests.workers import WorkerProcess, start_worker_process

ROOT = Path(__file__).resolve().parent

pytest_plugins = ["accounts.tests.cast"]

PROJECT_APPS = ("portal", "catalog", "accounts", "weights", "inference", "review")


_DATA_MIGRATIONS: list[tuple[object, object]] | None = None


def _data_migrations() -> list[tuple[object, object]]:
    """Each data migration of the project's apps with the historical models it was written
    against (the models it names may have moved since: License lived in accounts, ModelVariant
    in weights). Computed once per run: building migration states is slow."""
    global _DATA_MIGRATIONS
    if _DATA_MIGRATIONS is None:
        from django.db import connection
        from django.db.migrations.loader import MigrationLoader
        from django.db.migrations.operations.special import RunPython

        loader = MigrationLoader(connection, ignore_no_migrations=True)
        graph = loader.graph
        found: list[tuple[object, object]] = []
        done: set[tuple[str, str]] = set()
        for leaf in sorted(graph.leaf_nodes()):
            for key in graph.forwards_plan(leaf):
                if key in done or key[0] not in PROJECT_APPS:
                    continue
                done.add(key)
                codes = [op.code for op in graph.nodes[key].operations if isinstance(op, RunPython)]
                if codes:
                    state_apps = loader.project_state(key, at_end=True).apps
                    found.extend((code, state_apps) for code in codes)
        _DATA_MIGRATIONS = found
    return _DATA_MIGRATIONS


def restore_data_migration_rows() -> None:
    """Re-run the project's data migrations (each is idempotent), in migration order.

    A transactional test (live server, worker process) ends by flushing every table, which
    also removes the rows the data migrations made: the catalog, the license, the reviewers
    group, reason templates. Putting them back before each transactional test works whatever
    ran before; Django's serialized_rollback does not (it re-inserts content types that the
    flush's post_migrate already recreated).
    """
    for code, state_apps in _data_migrations():
        code(state_apps, None)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker) -> Iterator[None]:
    """pytest-django's test database, and before it is dropped, an end to the sessions
    still connected to it.

    ORM calls made while Playwright's sync API runs (it switches greenlets, and asgiref
    gives each its own connection) leave a connection that nothing in the test can reach
    to close; dropping the database would then fail.
    """
    yield
    from django.db import connection

    with django_db_blocker.unblock():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


@pytest.fixture(autouse=True)
def _data_migration_rows(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("django_db")
    transactional = (
        "transactional_db" in request.fixturenames
        or "live_server" in request.fixturenames
        or bool(marker and marker.kwargs.get("transaction"))
    )
    if transactional:
        request.getfixturevalue("transactional_db")
        restore_data_migration_rows()


class S3Server:
    def __init__(self, cfg: SeaweedConfig, proc: subprocess.Popen, bucket: str):
        self.cfg = cfg
        self.proc = proc
        self.bucket = bucket

    @property
    def endpoint(self) -> str:
        return self.cfg.endpoint

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (a worker, a client) that must use this server."""
        return self.cfg.env(bucket=self.bucket)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server with signature checking, and the portal's settings pointed at it."""
    from core import storage

    data_dir = tmp_path_factory.mktemp("seaweedfs")
    cfg = SeaweedConfig.on_free_ports(data_dir, access_key="test-key", secret_key=uuid.uuid4().hex)
    proc = start_seaweed(cfg, log_path=data_dir / "weed.log", timeout=90)
    server = S3Server(cfg, proc, bucket=f"test-{uuid.uuid4().hex[:8]}")
    overrides = override_settings(
        S3_ENDPOINT_URL=server.endpoint,
        S3_ACCESS_KEY_ID=cfg.access_key,
        S3_SECRET_ACCESS_KEY=cfg.secret_key,
        S3_BUCKET=server.bucket,
    )
    overrides.enable()
    storage.reset_client()
    storage.ensure_bucket(wait=60)
    try:
        yield server
    finally:
        overrides.disable()
        storage.reset_client()
        stop_process(proc, grace=1)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch):
    """Headless Chromium (the system's: Playwright's own download does not work offline)."""
    import shutil

    from django.db import connections
    from playwright.sync_api import sync_playwright

    from portal.tests.browser import CHROMIUM_ARGS

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    executable = (
        os.environ.get("PORTAL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    )
    if not os.access(executable, os.X_OK):  # plain `pytest` does not install it; make test does
        pytest.fail(
            f"No Chromium at {executable}: the browser tests need it. `make test` installs "
            "Debian's package (devtools/ensure_chromium.sh); or install 'chromium', or set "
            "PORTAL_CHROMIUM to its path.",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    # ORM calls made while Playwright's loop ran got their own connection (asgiref
    # context): close it, or the test database cannot be dropped.
    connections.close_all()


@pytest.fixture
def celery_worker(tmp_path: Path):
    """Start real Celery worker processes: `celery_worker(queues=["default"])`.

    The test must use the `transactional_db` fixture so the worker sees committed rows.
    Workers are killed at the end of the test.
    """
    started: list[WorkerProcess] = []

    def start(**kwargs) -> WorkerProcess:
        worker = start_worker_process(log_dir=tmp_path, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
