"""The plain-SQL readers (`core.rows` and the queries written on it) are held to the ORM by
their own tests on PostgreSQL; `make run`'s embedded database is SQLite, which differs in
JSON operators, datetimes and booleans. This runs those tests again on SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAIN_SQL_TESTS = [
    "core/tests/test_rows.py",
    "accounts/tests/test_access_check.py",
    "weights/tests/test_links_reuse.py",
    "inference/tests/test_limit_totals.py",
    "inference/tests/test_job_output.py",
]


@pytest.mark.slow
def test_the_plain_sql_readers_agree_with_the_orm_on_sqlite(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        "PORTAL_EXPECT_DB_VENDOR": "sqlite",
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PLAIN_SQL_TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    tail = result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail and "skipped" not in tail, tail
