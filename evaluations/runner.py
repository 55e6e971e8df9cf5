"""Scoring an evaluation in this process with the engine, for `manage.py evaluate` when no
worker serves the size and for `make run`'s demo seed. The size's published files are
fetched (SHA-256 verified) into JOBS_MODEL_CACHE_DIR/evaluate/<slug>, the same files the
evaluation's manifest lists, and loaded with the workers' dtype and device settings.
Imports torch: never imported by the web process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from catalog.models import ModelVariant
from evaluations.models import Evaluation
from evaluations.services import evaluation_score_in_process
from inference.checkpoints import checkpoint_fetch


def load_published(variant: ModelVariant):
    import torch

    from inference.llama import Llama

    directory = Path(settings.JOBS_MODEL_CACHE_DIR) / "evaluate" / variant.slug
    checkpoint_fetch(variant=variant, directory=directory)
    device = settings.JOBS_DEVICE
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Llama.load(
        directory, device=device, dtype=settings.JOBS_DTYPE, max_seq_len=variant.context_length
    )


def score_in_process(
    evaluation: Evaluation, *, llama=None, on_progress: Callable[[Evaluation], None] | None = None
) -> Evaluation:
    llama = llama or load_published(evaluation.variant)
    return evaluation_score_in_process(evaluation=evaluation, llama=llama, on_progress=on_progress)
