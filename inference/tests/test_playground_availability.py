"""The playground lists the sizes a researcher may run, and disables those no worker can run
now, with the reason."""

from __future__ import annotations

import re

import pytest

from catalog.models import WeightFile
from catalog.tests.factories import file_row
from core import workers

# Presence keys of these tests alone: they assert that no worker serves gpu.demo.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("own_presence")]


def options(html: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in re.finditer(r'<option value="([a-z0-9]+)"[^>]*>', html)}


def test_sizes_that_cannot_run_are_disabled_with_the_reason(researcher, client, settings):
    """The cast's researcher holds demo and 7B grants and accepted the license."""
    WeightFile.objects.filter(variant__slug="7b").delete()
    file_row("demo")
    client.force_login(researcher)

    found = options(client.get("/playground/").content.decode())
    assert set(found) == {"demo", "7b"}
    assert "disabled" in found["7b"] and "no published files yet" in found["7b"]
    assert "disabled" in found["demo"] and "No worker serves LLaMA demo now" in found["demo"]

    settings.WORKER_PRESENCE_SECONDS = 3600  # the key outlives a slow run
    workers.announce(node="playground@test", queues=["gpu.demo"])
    try:
        found = options(client.get("/playground/").content.decode())
        assert "disabled" not in found["demo"]
        assert "disabled" in found["7b"]
    finally:
        workers.withdraw(node="playground@test", queues=["gpu.demo"])
