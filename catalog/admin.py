from django.contrib import admin

from catalog.models import (
    CardVersionSeen,
    License,
    LicenseVersion,
    ModelCardVersion,
    ModelVariant,
    WeightFile,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Licenses change only by a new version written through the services, so the admin
    shows them without add or change buttons."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ModelVariant)
class ModelVariantAdmin(admin.ModelAdmin):
    list_display = [
        "size", "family", "shard_count", "license", "access_policy", "grant_days", "is_published",
    ]  # fmt: skip
    list_filter = ["family", "access_policy", "is_published"]


@admin.register(WeightFile)
class WeightFileAdmin(admin.ModelAdmin):
    """The manifest is written by `publish_weights` only."""

    list_display = ["variant", "path", "size", "sha256", "uploaded_at"]
    list_filter = ["variant"]
    readonly_fields = ["variant", "path", "size", "sha256", "md5", "s3_key", "uploaded_at"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(License)
class LicenseAdmin(ReadOnlyAdmin):
    list_display = ["slug", "title"]


@admin.register(LicenseVersion)
class LicenseVersionAdmin(ReadOnlyAdmin):
    list_display = ["license", "version", "title", "effective_at", "sha256"]


@admin.register(ModelCardVersion)
class ModelCardVersionAdmin(ReadOnlyAdmin):
    """Card versions are published from the review console (audited), never changed here."""

    list_display = ["variant", "version", "change_note", "author_ref", "created_at"]
    list_filter = ["variant"]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(CardVersionSeen)
class CardVersionSeenAdmin(ReadOnlyAdmin):
    list_display = ["application", "card_version", "seen_at"]
