"""Evaluations run by the portal: a task (JSONL items of one kind), an evaluation (a task
scored on one size), one row per scored item, and the scoring jobs that carry the items.

Every item is scored exactly once: `EvaluationItem` is unique per (evaluation, index), and
results are written with INSERT ... ON CONFLICT DO NOTHING, so a job that runs twice, a
chunk submitted again after a resume, or two sweeps collecting at once add nothing twice.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class TaskKind(models.TextChoices):
    MULTIPLE_CHOICE = "multiple_choice", "Multiple choice"
    PAIRED_SENTENCES = "paired_sentences", "Paired sentences (CrowS-Pairs)"
    LOGLIKELIHOOD = "loglikelihood", "Log-likelihood / perplexity"


class EvaluationTask(models.Model):
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=32, choices=TaskKind.choices)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="evaluation_tasks"
    )
    shared = models.BooleanField(
        default=False, help_text="Every researcher may run it (staff tasks only)"
    )
    # The uploaded file as sent (its SHA-256 is the task's identity in provenance) and its
    # items, checked and normalised, in file order.
    content = models.TextField()
    sha256 = models.CharField(max_length=64)
    items = models.JSONField()
    item_count = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="evaltask_owner_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display().lower()}, {self.item_count} items)"


class EvaluationState(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Finished"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# The one table of allowed state changes; every service checks it. Resume is
# cancelled/failed -> running: only the items not scored yet are sent again.
TRANSITIONS: dict[str, frozenset[str]] = {
    EvaluationState.RUNNING: frozenset(
        {EvaluationState.SUCCEEDED, EvaluationState.FAILED, EvaluationState.CANCELLED}
    ),
    EvaluationState.SUCCEEDED: frozenset(),
    EvaluationState.FAILED: frozenset({EvaluationState.RUNNING}),
    EvaluationState.CANCELLED: frozenset({EvaluationState.RUNNING}),
}


def can_move(from_state: str, to_state: str) -> bool:
    return to_state in TRANSITIONS[from_state]


class ScoredBy(models.TextChoices):
    WORKER = "worker", "Scoring jobs on the workers"
    IN_PROCESS = "in_process", "The engine in the command's own process"


class Evaluation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # A task's evaluations go with it (`task_delete`, or its owner's account deleted).
    task = models.ForeignKey(EvaluationTask, on_delete=models.CASCADE, related_name="evaluations")
    variant = models.ForeignKey(
        "catalog.ModelVariant", on_delete=models.PROTECT, related_name="evaluations"
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="evaluations"
    )
    state = models.CharField(
        max_length=16, choices=EvaluationState.choices, default=EvaluationState.RUNNING
    )
    scored_by = models.CharField(max_length=16, choices=ScoredBy.choices, default=ScoredBy.WORKER)
    params = models.JSONField(default=dict, blank=True)
    items_total = models.PositiveIntegerField()
    items_done = models.PositiveIntegerField(default=0)
    results = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, help_text="Why it failed, for its owner")
    note = models.CharField(
        max_length=500, blank=True, help_text="Why it waits now (a quota, no worker), if it does"
    )
    # Provenance: what exactly was measured.
    task_sha256 = models.CharField(max_length=64)
    checkpoint_manifest = models.JSONField(
        default=dict, help_text="The size's published files (path, size, SHA-256) when it ran"
    )
    engine_version = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="eval_owner_idx"),
            # The sweep: evaluations still running.
            models.Index(
                fields=["created_at"],
                condition=models.Q(state="running"),
                name="eval_running_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task.name} on {self.variant} ({self.state})"

    def get_absolute_url(self) -> str:
        return reverse("evaluations:detail", kwargs={"evaluation_id": self.pk})

    @property
    def progress(self) -> float:
        return self.items_done / self.items_total if self.items_total else 1.0

    @property
    def is_active(self) -> bool:
        return self.state == EvaluationState.RUNNING


class EvaluationChunk(models.Model):
    """Some items of an evaluation sent as one scoring job. `layout` maps the job's prompts
    back to items: [[item index, part, prefix tokens scored as context], ...] in prompt order."""

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="chunks")
    job = models.OneToOneField(
        "inference.GenerationJob", on_delete=models.CASCADE, related_name="evaluation_chunk"
    )
    item_indexes = models.JSONField()
    layout = models.JSONField()
    collected = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(
                fields=["evaluation"],
                condition=models.Q(collected=False),
                name="evalchunk_outstanding_idx",
            )
        ]

    def __str__(self) -> str:
        return f"chunk of {len(self.item_indexes)} items ({self.job_id})"


class EvaluationItem(models.Model):
    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="items")
    index = models.PositiveIntegerField(help_text="0-based; the task file's line is index + 1")
    scores = models.JSONField()
    job_id = models.UUIDField(null=True, blank=True, help_text="The scoring job (none: in-process)")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["evaluation", "index"]
        constraints = [
            models.UniqueConstraint(fields=["evaluation", "index"], name="evalitem_once")
        ]

    def __str__(self) -> str:
        return f"item {self.index} of {self.evaluation_id}"
