from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class AccessPolicy(models.TextChoices):
    MANUAL = "manual", "One reviewer decides"
    TWO_REVIEWERS = "two_reviewers", "Two different reviewers must approve"
    AUTOMATIC = "automatic", "Approved on submission when no flag is raised"


class ModelVariant(models.Model):
    """One size of a model family in the catalog (LLaMA 7B, 13B, ... and the tiny demo)."""

    family = models.CharField(max_length=64, default="LLaMA")
    slug = models.SlugField(max_length=32, unique=True, help_text="URL and queue name: 7b, demo")
    size = models.CharField(max_length=16, unique=True, help_text="As people say it: 7B, demo")
    params = models.JSONField(help_text="The checkpoint's params.json")
    shard_count = models.PositiveSmallIntegerField(help_text="Model-parallel shards")
    context_length = models.PositiveIntegerField(default=2048)
    model_card = models.TextField(blank=True)
    license = models.ForeignKey(
        "accounts.License",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="variants",
        help_text="The license that governs this size (empty: the portal's default license)",
    )
    access_policy = models.CharField(
        max_length=16, choices=AccessPolicy.choices, default=AccessPolicy.MANUAL
    )
    grant_days = models.PositiveIntegerField(default=365, help_text="Default length of a grant")
    is_published = models.BooleanField(default=False)
    position = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position", "slug"]

    def __str__(self) -> str:
        return f"{self.family} {self.size}"

    def get_absolute_url(self) -> str:
        return reverse("weights:variant_detail", kwargs={"slug": self.slug})

    @property
    def queue_name(self) -> str:
        return f"gpu.{self.slug}"


class WeightFile(models.Model):
    """One file of a published checkpoint: the manifest row `publish_weights` writes only
    after the file's upload completed (so a row always names a whole object in S3)."""

    variant = models.ForeignKey(ModelVariant, on_delete=models.PROTECT, related_name="files")
    path = models.CharField(max_length=255, help_text="Path inside the checkpoint directory")
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    md5 = models.CharField(max_length=32)
    s3_key = models.CharField(max_length=512, unique=True)
    uploaded_at = models.DateTimeField()

    class Meta:
        ordering = ["variant", "path"]
        constraints = [
            models.UniqueConstraint(fields=["variant", "path"], name="weightfile_unique_path")
        ]

    def __str__(self) -> str:
        return f"{self.variant.slug}/{self.path}"

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class DownloadLink(models.Model):
    """A personal, expiring, use-capped link to one file: `/dl/<id>`.

    The id is random and opaque; it grants nothing by itself: every use checks the owner's
    access again and issues a fresh short-lived S3 URL.
    """

    id = models.CharField(primary_key=True, max_length=43, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="download_links"
    )
    file = models.ForeignKey(WeightFile, on_delete=models.CASCADE, related_name="links")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    max_uses = models.PositiveIntegerField()
    use_count = models.PositiveIntegerField(default=0)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "expires_at"], name="downloadlink_user_expiry")]

    def __str__(self) -> str:
        return f"link to {self.file} for {self.user}"

    def get_absolute_url(self) -> str:
        return reverse("download", kwargs={"link_id": self.id})


class DownloadEvent(models.Model):
    """A download that was let through: written when the redirect to S3 is issued, never
    for a refused request."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="download_events"
    )
    file = models.ForeignKey(WeightFile, on_delete=models.PROTECT, related_name="download_events")
    link = models.ForeignKey(
        DownloadLink, on_delete=models.SET_NULL, null=True, related_name="events"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.user} downloaded {self.file} at {self.created_at:%Y-%m-%d %H:%M}"
