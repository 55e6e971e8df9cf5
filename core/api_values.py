"""Values in API answers built as plain data (the hot views skip their serializers, which stay
as the schema's): rendered exactly as those serializers render them."""

from __future__ import annotations

from datetime import datetime

from rest_framework import serializers

_DATETIME = serializers.DateTimeField()  # DRF's rendering under the project's settings


def api_datetime(value: datetime | None) -> str | None:
    """A datetime as a DRF `DateTimeField` renders it (None stays None)."""
    return None if value is None else _DATETIME.to_representation(value)
