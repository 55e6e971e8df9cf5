"""The review console's own records: claims, flags, internal notes and reason templates.

Applications, decisions, grants and their events belong to `accounts`; nothing here
changes them. Every decision goes through `accounts.services`.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.flags import FlagCode


class Claim(models.Model):
    """A reviewer working on an application, so that no second reviewer works the same one.

    One row per application at most (the primary key is the application): claiming is an
    insert that fails when the row exists, taking over is a conditional update.
    """

    application = models.OneToOneField(
        "accounts.Application",
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="review_claim",
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="review_claims"
    )
    claimed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["reviewer"], name="review_claim_reviewer_idx")]

    def __str__(self) -> str:
        return f"application {self.application_id} claimed by {self.reviewer}"


class Flag(models.Model):
    """A warning computed when the application was (re)submitted. Never shown to the applicant."""

    application = models.ForeignKey(
        "accounts.Application", on_delete=models.CASCADE, related_name="review_flags"
    )
    code = models.CharField(max_length=32, choices=FlagCode.choices)
    detail = models.CharField(max_length=500, blank=True, help_text="What was seen, for a person")
    related_application = models.ForeignKey(
        "accounts.Application",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The other application behind the flag (duplicate text, shared IP, rejection)",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.UniqueConstraint(fields=["application", "code"], name="review_flag_once")
        ]
        # The queue filters by flag code: find the applications carrying one quickly.
        indexes = [models.Index(fields=["code", "application"], name="review_flag_code_idx")]

    def __str__(self) -> str:
        return f"{self.application_id}: {self.code}"


class NoteKind(models.TextChoices):
    NOTE = "note", "Note"
    CLAIM = "claim", "Claim"


class InternalNote(models.Model):
    """A reviewer's note on an application. Internal: the applicant never sees it."""

    application = models.ForeignKey(
        "accounts.Application", on_delete=models.CASCADE, related_name="review_notes"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=8, choices=NoteKind.choices, default=NoteKind.NOTE)
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"note on {self.application_id} by {self.author}"


class ReasonKind(models.TextChoices):
    REJECT = "reject", "Rejection"
    RETURN = "return", "Return for changes"
    REVOKE = "revoke", "Revocation"


class ReasonTemplate(models.Model):
    """A stock text a reviewer picks and edits; the applicant sees the edited text."""

    kind = models.CharField(max_length=8, choices=ReasonKind.choices)
    title = models.CharField(max_length=120)
    text = models.TextField()
    position = models.PositiveSmallIntegerField(default=0)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["kind", "position", "title"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "title"], name="review_reason_title_once")
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.title}"
