"""Pure checks of identifiers people type (no database)."""

from __future__ import annotations

import re

_ORCID_RE = re.compile(r"^\d{4}-\d{4}-\d{4}-\d{3}[\dX]$")
_ORCID_URL_PREFIXES = ("https://orcid.org/", "http://orcid.org/", "orcid.org/")


def orcid_normalize(value: str) -> str:
    """'https://orcid.org/0000-0002-1825-0097 ' -> '0000-0002-1825-0097' (x -> X)."""
    value = (value or "").strip()
    for prefix in _ORCID_URL_PREFIXES:
        if value.lower().startswith(prefix):
            value = value[len(prefix) :]
            break
    if re.fullmatch(r"[\dXx]{16}", value):
        value = "-".join(value[i : i + 4] for i in range(0, 16, 4))
    return value.upper()


def orcid_checksum(base_digits: str) -> str:
    """ISO 7064 MOD 11-2 check character over the first 15 digits."""
    total = 0
    for digit in base_digits:
        total = (total + int(digit)) * 2
    result = (12 - total % 11) % 11
    return "X" if result == 10 else str(result)


def orcid_error(value: str) -> str | None:
    """Why this ORCID iD is not valid, or None when it is."""
    value = orcid_normalize(value)
    if not _ORCID_RE.match(value):
        return "An ORCID iD looks like 0000-0002-1825-0097 (four groups of four digits)."
    digits = value.replace("-", "")
    if orcid_checksum(digits[:15]) != digits[15]:
        return "This ORCID iD's check digit does not match: please copy it again from orcid.org."
    return None
