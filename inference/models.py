"""Generation jobs: one row per request to run a model, the record of what happened to it.

The database is the record of every job; Redis only carries the queue messages, the token
stream and cancellation news, so a Redis restart loses no job (the sweep re-sends messages).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# The one table of allowed state changes; every service checks it.
# RUNNING -> QUEUED is the sweep (or a redelivery) taking a job back from a dead worker.
TRANSITIONS: dict[str, frozenset[str]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)
TERMINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def can_move(from_state: str, to_state: str) -> bool:
    return to_state in TRANSITIONS[from_state]


class JobSource(models.TextChoices):
    PLAYGROUND = "playground", "Playground"
    API = "api", "REST API"
    OPENAI = "openai", "OpenAI-compatible API"


class GenerationJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generation_jobs"
    )
    variant = models.ForeignKey(
        "catalog.ModelVariant", on_delete=models.PROTECT, related_name="generation_jobs"
    )
    token = models.ForeignKey(
        "accounts.AccessToken",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="generation_jobs",
        help_text="The personal access token that submitted it (none: a browser session)",
    )
    source = models.CharField(max_length=16, choices=JobSource.choices, default=JobSource.API)
    external_user = models.CharField(
        max_length=256, blank=True, help_text="The OpenAI `user` field, as the caller sent it"
    )

    # What to run. `params`: max_new_tokens, temperature, top_p, top_k, seed, stop (list),
    # logprobs (bool), echo (bool), n (choices per prompt).
    prompts = models.JSONField()
    params = models.JSONField()

    state = models.CharField(
        max_length=16, choices=JobState.choices, default=JobState.QUEUED, db_index=False
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    # Who holds a running job: the machine and process (a redelivered message checks whether
    # that process is still alive) and a random claim id that the finishing update must match.
    worker = models.CharField(max_length=255, blank=True, help_text="Celery node name")
    worker_host = models.CharField(max_length=255, blank=True)
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    claim_id = models.UUIDField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    # Results: one entry per choice, in prompt order then choice order:
    # {"index", "prompt_index", "text", "token_ids", "tokens", "logprobs",
    #  "prompt_logprobs", "finish_reason"}.
    outputs = models.JSONField(default=list, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    # Tokens counted against the owner's daily quota: reserved at submission (prompt plus
    # every max_new_tokens), replaced by what was actually used when the job ends.
    token_charge = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, help_text="For the owner: what went wrong and what to do")

    created_at = models.DateTimeField(default=timezone.now)
    message_sent = models.BooleanField(
        default=False,
        help_text="The broker took the latest queue message (else the sweep sends it again)",
    )
    queued_at = models.DateTimeField(
        default=timezone.now, help_text="When the latest queue message was sent"
    )
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Timings, derived once when the job ends (seconds / tokens per second).
    queue_wait = models.FloatField(null=True, blank=True, help_text="Submission to start, s")
    time_to_first_token = models.FloatField(
        null=True, blank=True, help_text="Submission to first token, s"
    )
    decode_tokens_per_second = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The owner's history page and the rolling token quota (created_at window).
            models.Index(fields=["owner", "-created_at"], name="job_owner_created_idx"),
            # Concurrent-job limit: the owner's queued and running jobs.
            models.Index(
                fields=["owner"],
                condition=models.Q(state__in=["queued", "running"]),
                name="job_owner_active_idx",
            ),
            # The worker's batch claims (oldest queued job of a size) and the sweep's
            # "queued too long" scan.
            models.Index(
                fields=["variant", "created_at"],
                condition=models.Q(state="queued"),
                name="job_queued_idx",
            ),
            # The sweep: running jobs whose heartbeat went stale.
            models.Index(
                fields=["heartbeat_at"],
                condition=models.Q(state="running"),
                name="job_running_heartbeat_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"job {self.id} ({self.variant_id}, {self.state})"

    def get_absolute_url(self) -> str:
        return reverse("inference-api:job-detail", kwargs={"job_id": self.id})

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def n(self) -> int:
        return int(self.params.get("n", 1))


class JobEvent(models.Model):
    """One state change of a job, written by the service that made it."""

    job = models.ForeignKey(GenerationJob, on_delete=models.CASCADE, related_name="events")
    from_state = models.CharField(max_length=16, choices=JobState.choices, blank=True)
    to_state = models.CharField(max_length=16, choices=JobState.choices)
    message = models.TextField(blank=True)
    worker = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.job_id}: {self.from_state or '-'} -> {self.to_state}"
