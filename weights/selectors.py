from __future__ import annotations

from catalog.models import ModelVariant
from catalog.selectors import variant_files
from weights.checkpoints import checklist_render


def variant_checklist(variant: ModelVariant) -> str:
    """checklist.chk for the stored files, `md5sum -c` format."""
    return checklist_render([(f.md5, f.path) for f in variant_files(variant)])
