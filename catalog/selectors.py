"""Reads of the catalog that more than one app needs: which sizes exist, which are
published, and each size's published files."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet
from django.http import Http404

from catalog.models import CardVersionSeen, ModelCardVersion, ModelVariant, WeightFile
from core import rows, workers
from core.errors import NotFound


def variant_list_published() -> QuerySet[ModelVariant]:
    return ModelVariant.objects.filter(is_published=True)


def variant_get_published(*, slug: str) -> ModelVariant:
    """The published variant with this slug (case-insensitive, '7B' or '7b'), or 404."""
    # One plain query: every download-links request starts here (the license, where a
    # page shows it, is read when asked for).
    variant = rows.first(ModelVariant, "m.slug = %s AND m.is_published = %s", [slug.lower(), True])
    if variant is None:
        raise Http404("No published model size with this name.")
    return variant


def variant_get(*, size: str) -> ModelVariant:
    """A catalog variant by size or slug ('7B', '7b', 'demo'), published or not."""
    variant = rows.first(ModelVariant, "m.slug = %s", [size.lower()])  # every job submission
    if variant is None:
        raise NotFound(
            f"No model size {size!r}. Known sizes: "
            + ", ".join(ModelVariant.objects.values_list("size", flat=True)),
            code="unknown_size",
        )
    return variant


def variant_files(variant: ModelVariant) -> list[WeightFile]:
    """The variant's manifest: every stored file, in path order. The job worker fills its
    cache from this with `core.storage.download_file` (SHA-256 verified)."""
    return list(WeightFile.objects.filter(variant=variant).order_by("path"))


def variant_manifest(variant: ModelVariant) -> dict:
    return {
        "family": variant.family,
        "size": variant.size,
        "shard_count": variant.shard_count,
        "params": variant.params,
        "files": [
            {"path": f.path, "size": f.size, "sha256": f.sha256, "md5": f.md5}
            for f in variant_files(variant)
        ],
    }


# --- Whether a size can be used now -----------------------------------------------------


@dataclass(frozen=True)
class Availability:
    """What a size offers right now: published files to download, and live workers to run
    it. Shown on the model page, in the console's approve step, by the APIs and the
    playground; job submission refuses a size that cannot run."""

    size: str
    queue: str
    files: bool
    workers: int | None  # None: the broker cannot be asked
    # Each live worker's tensor-parallel ranks (1: one process; 8: 65B on eight GPUs).
    ranks: tuple[int, ...] = ()

    @property
    def served_by(self) -> str:
        """ "1 worker", "2 workers, 4 tensor-parallel ranks each"; "" when none serves."""
        if not self.workers:
            return ""
        text = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        most = max(self.ranks, default=1)
        if most > 1:
            if len(set(self.ranks)) == 1:
                each = " each" if self.workers > 1 else ""
                return f"{text}, {most} tensor-parallel ranks{each}"
            return f"{text}, up to {most} tensor-parallel ranks"
        return text

    @property
    def runnable(self) -> bool:
        return self.files and bool(self.workers)

    @property
    def download_note(self) -> str:
        return "" if self.files else f"LLaMA {self.size} has no published files yet."

    @property
    def run_note(self) -> str:
        if not self.files:
            return f"LLaMA {self.size} has no published files yet, so no worker can run it."
        if self.workers is None:
            return (
                f"Whether a worker serves LLaMA {self.size} cannot be told now: the job "
                "broker does not answer. Try again in a minute."
            )
        if self.workers == 0:
            return (
                f"No worker serves LLaMA {self.size} now (queue {self.queue}): its jobs "
                "cannot run until an operator starts one."
            )
        return ""


def variants_availability(variants) -> dict[str, Availability]:
    """Availability of each variant by slug: one query for the files, one SCAN per queue."""
    variants = list(variants)
    with_files = set(
        WeightFile.objects.filter(variant__in=variants).values_list("variant_id", flat=True)
    )
    out = {}
    for v in variants:
        ranks = workers.serving(v.queue_name)
        out[v.slug] = Availability(
            size=v.size,
            queue=v.queue_name,
            files=v.pk in with_files,
            workers=None if ranks is None else len(ranks),
            ranks=tuple(ranks or ()),
        )
    return out


def variant_availability(variant: ModelVariant) -> Availability:
    return variants_availability([variant])[variant.slug]


# --- Model cards ---------------------------------------------------------------------------


def card_current_versions(variants) -> dict[int, ModelCardVersion]:
    """The newest card version of each of `variants`, by variant id, in one query."""
    # A card has tens of versions at most: reading them all beats a per-database DISTINCT ON.
    versions = (
        ModelCardVersion.objects.filter(variant_id__in=[v.pk for v in variants])
        .select_related("variant")
        .order_by("variant_id", "-version")
    )
    current: dict[int, ModelCardVersion] = {}
    for version in versions:
        current.setdefault(version.variant_id, version)
    return current


def card_version_get(*, variant: ModelVariant, version: int | None = None) -> ModelCardVersion:
    """A published size's card: the given version, or the newest; 404 if there is none."""
    versions = variant.card_versions.all()
    found = (
        versions.filter(version=version).first()
        if version is not None
        else versions.order_by("-version").first()
    )
    if found is None:
        raise Http404(f"{variant} has no model card" + (f" version {version}." if version else "."))
    found.variant = variant
    return found


def card_versions(variant: ModelVariant) -> list[ModelCardVersion]:
    """Every version of a size's card, newest first, without their (long) content."""
    return list(
        variant.card_versions.order_by("-version").only(
            "id", "variant_id", "version", "change_note", "author_ref", "sha256", "created_at"
        )
    )


def card_versions_seen(*, application_id: int) -> dict[int, ModelCardVersion]:
    """The card version each requested size showed when the application was last submitted,
    by variant id."""
    seen = (
        CardVersionSeen.objects.filter(application_id=application_id)
        .select_related("card_version__variant")
        .order_by("seen_at", "card_version__version")
    )
    return {s.card_version.variant_id: s.card_version for s in seen}
