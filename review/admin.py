from django.contrib import admin

from review.models import Claim, Flag, InternalNote, ReasonTemplate


@admin.register(ReasonTemplate)
class ReasonTemplateAdmin(admin.ModelAdmin):
    list_display = ("title", "kind", "position", "is_active")
    list_filter = ("kind", "is_active")


@admin.register(Flag)
class FlagAdmin(admin.ModelAdmin):
    list_display = ("application", "code", "detail", "created_at")
    list_filter = ("code",)
    raw_id_fields = ("application", "related_application")


@admin.register(Claim)
class ClaimAdmin(admin.ModelAdmin):
    list_display = ("application", "reviewer", "claimed_at")
    raw_id_fields = ("application",)


@admin.register(InternalNote)
class InternalNoteAdmin(admin.ModelAdmin):
    list_display = ("application", "author", "kind", "created_at")
    raw_id_fields = ("application",)
