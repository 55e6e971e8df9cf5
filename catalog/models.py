"""The catalog everything else refers to: the model sizes, their access policies, the
licenses that govern them (with their versions), the files published for each size and each
size's model card (with its versions).

It sits just above `core` and below the access domain: applications, grants and jobs point
at these rows, and nothing here points back but one link by name (`CardVersionSeen`: which
version of a model card an application was submitted with, kept beside the card versions).
The tables keep the names they had when the models lived in `accounts` and `weights` (see
migration 0001).
"""

from __future__ import annotations

from django.db import models
from django.urls import reverse

# --- Licenses ----------------------------------------------------------

# The license that governs a model size when the catalog names none.
DEFAULT_LICENSE_SLUG = "llama-noncommercial"


class License(models.Model):
    """A license document; its text lives in numbered versions."""

    slug = models.SlugField(max_length=64, unique=True)
    title = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "accounts_license"  # kept from before the catalog app existed
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.title


class LicenseVersion(models.Model):
    """One published text of a license. Versions are never edited: a change is a new one."""

    license = models.ForeignKey(License, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    title = models.CharField(max_length=200)
    text = models.TextField()
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the UTF-8 text")
    effective_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "accounts_licenseversion"  # kept from before the catalog app existed
        ordering = ["license", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["license", "version"], name="license_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.title} (version {self.version})"


# --- Sizes and their published files ----------------------------------------------------


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
        License,
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
        db_table = "weights_modelvariant"  # kept from before the catalog app existed
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
        db_table = "weights_weightfile"  # kept from before the catalog app existed
        ordering = ["variant", "path"]
        constraints = [
            models.UniqueConstraint(fields=["variant", "path"], name="weightfile_unique_path")
        ]

    def __str__(self) -> str:
        return f"{self.variant.slug}/{self.path}"

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# --- Model cards ---------------------------------------------------------------------------

# What a card table's `chart` says the page draws: each row a size and each other column a
# benchmark (grouped bars per benchmark), or each row a category with one value (bars).
CARD_CHARTS = ("", "by_size", "by_category")


class ModelCardVersion(models.Model):
    """One published version of a size's model card. Versions are never edited: a change is a
    new version, so what a researcher read when applying stays readable.

    `body` is Markdown (raw HTML is never rendered); a line `[table: KEY]` places the table of
    that key. `metadata` is a list of [label, value] pairs (a list, not an object: PostgreSQL's
    jsonb does not keep the order of an object's keys). `tables` holds the figures as data:
    each {"key", "title", "columns", "rows", "source", "unit", "chart", "note"}, so the page
    charts them and offers each as CSV and JSON.
    """

    variant = models.ForeignKey(
        ModelVariant, on_delete=models.PROTECT, related_name="card_versions"
    )
    version = models.PositiveIntegerField()
    summary = models.TextField(help_text="One paragraph of plain text, shown in the catalog")
    metadata = models.JSONField(default=list, blank=True)
    body = models.TextField(help_text="Markdown; `[table: KEY]` on its own line places a table")
    tables = models.JSONField(default=list, blank=True)
    change_note = models.CharField(max_length=300, blank=True)
    # Who wrote it, as the audit log names people ("id:email"); empty for the seeded version.
    author_ref = models.CharField(max_length=300, blank=True)
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the version's content")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["variant", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["variant", "version"], name="card_version_unique")
        ]

    def __str__(self) -> str:
        return f"Model card of {self.variant} (version {self.version})"

    def get_absolute_url(self) -> str:
        return reverse(
            "catalog:card_version", kwargs={"slug": self.variant.slug, "version": self.version}
        )

    def table(self, key: str) -> dict | None:
        return next((t for t in self.tables if t.get("key") == key), None)


class CardVersionSeen(models.Model):
    """The card version of a requested size that was current when an application was
    submitted: what the applicant was shown and linked to. One row per submission and size
    (a resubmission after a new version adds one).

    The link to the application is the catalog's one reference upwards, by name only (no
    import): the record belongs with the card versions it pins, which are PROTECTed by it.
    """

    application = models.ForeignKey(
        "accounts.Application", on_delete=models.CASCADE, related_name="card_versions_seen"
    )
    card_version = models.ForeignKey(
        ModelCardVersion, on_delete=models.PROTECT, related_name="seen_by"
    )
    seen_at = models.DateTimeField()

    class Meta:
        ordering = ["application", "seen_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["application", "card_version"], name="card_version_seen_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.card_version} seen by application #{self.application_id}"
