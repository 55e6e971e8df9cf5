from __future__ import annotations

import pytest

from catalog.models import WeightFile

pytestmark = pytest.mark.django_db


@pytest.mark.slow  # trains the whole demo model (about half a minute)
def test_publish_demo_builds_and_publishes_once_then_changes_nothing(s3, tmp_path):
    from weights.demo import publish_demo

    first = publish_demo(tmp_path / "demo")
    second = publish_demo(tmp_path / "demo")

    assert sorted(first.uploaded) == ["consolidated.00.pth", "params.json", "tokenizer.model"]
    assert second.uploaded == []
    assert WeightFile.objects.filter(variant__slug="demo").count() == 3
