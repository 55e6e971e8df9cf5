from __future__ import annotations

from django.db import models
from django.urls import reverse


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
