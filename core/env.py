"""Typed readers for environment variables.

Every setting the portal reads from the environment goes through one of these, so that a
typo in a boolean or a number fails at start-up with the variable's name instead of
behaving strangely later. `.env.example` lists every variable.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_ranks(name: str) -> dict[str, int]:
    """`slug:count` pairs, comma-separated ("33b:4,65b:8"), as {slug: count}."""
    out: dict[str, int] = {}
    for item in env_list(name):
        slug, sep, count = item.partition(":")
        try:
            value = int(count) if sep else 0
        except ValueError:
            value = 0
        if not slug.strip() or value < 1:
            raise ImproperlyConfigured(
                f"{name} must list size:ranks pairs such as 33b:4,65b:8 (ranks at least 1), "
                f"got {item!r}"
            )
        out[slug.strip()] = value
    return out


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (compared lower-case); unset or empty: `default`."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    return value


def env_size_choices(name: str, choices: tuple[str, ...]) -> dict[str, str]:
    """`slug:value` pairs, comma-separated ("65b:bfloat16,7b:float32"), each value one of
    `choices`, as {slug: value}."""
    out: dict[str, str] = {}
    for item in env_list(name):
        slug, sep, value = item.partition(":")
        value = value.strip().lower()
        if not slug.strip() or not sep or value not in choices:
            raise ImproperlyConfigured(
                f"{name} must list size:value pairs such as 65b:{choices[-1]}, each value one "
                f"of {', '.join(choices)}; got {item!r}"
            )
        out[slug.strip()] = value
    return out
