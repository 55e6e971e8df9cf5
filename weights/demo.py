"""The demo model for `manage.py seed_demo`: build the tiny checkpoint once, publish it.

Idempotent: the builder is deterministic and `variant_publish` skips files already stored
with the same size and SHA-256, so a second run uploads nothing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from django.conf import settings

from catalog.models import ModelVariant
from core import storage
from weights.services import PublishResult, variant_publish


def demo_checkpoint_dir() -> Path:
    return Path(settings.BASE_DIR) / "demo-checkpoint"


def demo_checkpoint_build(directory: Path) -> Path:
    """Build the demo checkpoint into `directory` unless a complete one is there."""
    if (directory / "params.json").exists() and (directory / "checklist.chk").exists():
        return directory
    from inference.llama.demo import build_demo_checkpoint  # torch: never in the web process

    variant = ModelVariant.objects.get(slug="demo")
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final place and renamed, so an interrupted build leaves no half folder.
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".demo-build-") as tmp:
        build_demo_checkpoint(Path(tmp) / "out", shards=variant.shard_count)
        if directory.exists():
            shutil.rmtree(directory)
        (Path(tmp) / "out").rename(directory)
    return directory


def publish_demo(directory: Path | None = None) -> PublishResult:
    """Build (if needed) and publish the demo checkpoint; safe to call any number of times."""
    directory = Path(directory) if directory else demo_checkpoint_dir()
    demo_checkpoint_build(directory)
    storage.ensure_bucket()
    return variant_publish(variant=ModelVariant.objects.get(slug="demo"), directory=directory)


def seed_demo_weights() -> list[str]:
    result = publish_demo()
    return [
        f"demo model: {len(result.uploaded)} file(s) uploaded, {len(result.skipped)} already stored"
    ]
