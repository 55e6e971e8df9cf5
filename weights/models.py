from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class DownloadLink(models.Model):
    """A personal, expiring, use-capped link to one file: `/dl/<id>`.

    The id is random and opaque; it grants nothing by itself: every use checks the owner's
    access again and issues a fresh short-lived S3 URL.
    """

    id = models.CharField(primary_key=True, max_length=43, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="download_links"
    )
    file = models.ForeignKey("catalog.WeightFile", on_delete=models.CASCADE, related_name="links")
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
    file = models.ForeignKey(
        "catalog.WeightFile", on_delete=models.PROTECT, related_name="download_events"
    )
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
