from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from core.env import env_bool, env_float, env_int, env_list, env_str

ROOT = Path(__file__).resolve().parents[2]


def test_env_helpers_parse_typed_values(monkeypatch):
    monkeypatch.setenv("X_BOOL", "Yes")
    monkeypatch.setenv("X_INT", "42")
    monkeypatch.setenv("X_FLOAT", "0.5")
    monkeypatch.setenv("X_LIST", " a.example, b.example ,,")
    monkeypatch.delenv("X_MISSING", raising=False)

    assert env_bool("X_BOOL") is True
    assert env_int("X_INT", 1) == 42
    assert env_float("X_FLOAT", 1.0) == 0.5
    assert env_list("X_LIST") == ["a.example", "b.example"]
    assert env_str("X_MISSING", "fallback") == "fallback"
    assert env_int("X_MISSING", 7) == 7


@pytest.mark.parametrize(
    ("reader", "value"), [(env_bool, "maybe"), (lambda n: env_int(n, 0), "ten")]
)
def test_env_helpers_name_the_variable_on_bad_values(monkeypatch, reader, value):
    monkeypatch.setenv("X_BAD", value)
    with pytest.raises(ImproperlyConfigured, match="X_BAD"):
        reader("X_BAD")


def _production_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "EMAIL_"))}
    env.update(
        {
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "a-long-random-production-secret-" + "k7Qz9" * 10,
            "DJANGO_ALLOWED_HOSTS": "portal.example.org",
            "DJANGO_CSRF_TRUSTED_ORIGINS": "https://portal.example.org",
            "DATABASE_URL": os.environ["DATABASE_URL"],
        }
    )
    return env


def test_deploy_check_is_clean_with_production_settings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_production_mode_refuses_to_start_without_a_secret_key():
    env = _production_env()
    del env["DJANGO_SECRET_KEY"]
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required" in result.stderr


def test_env_example_lists_every_variable_the_code_reads():
    sources = [ROOT / "portal" / "settings.py", *sorted((ROOT / "devtools").glob("*.py"))]
    read = set()
    for source in sources:
        text = source.read_text()
        read |= set(re.findall(r'env_(?:str|bool|int|float|list)\(\s*"([A-Z0-9_]+)"', text))
        read |= set(re.findall(r'environ(?:\.get)?\(\s*"((?:PORTAL|S3)_[A-Z0-9_]+)"', text))
        read |= set(re.findall(r'environ\[\s*"([A-Z0-9_]+)"\s*\]', text))
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read, "found no variables: the pattern is broken"
    assert read - listed == set()
