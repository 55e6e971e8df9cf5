from django.contrib import admin

from weights.models import ModelVariant


@admin.register(ModelVariant)
class ModelVariantAdmin(admin.ModelAdmin):
    list_display = ["size", "family", "shard_count", "access_policy", "grant_days", "is_published"]
    list_filter = ["family", "access_policy", "is_published"]
