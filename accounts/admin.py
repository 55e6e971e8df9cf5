from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db import models

from accounts.models import (
    AccessToken,
    Application,
    ApplicationEvent,
    AuditEntry,
    Grant,
    LicenseAcceptance,
    SizeDecision,
    User,
)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "first_name", "last_name", "is_staff", "is_active", "date_joined"]
    search_fields = ["email", "first_name", "last_name"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Name", {"fields": ("first_name", "last_name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Raw data for inspection. Changes go through the services (the review console), so the
    admin never bypasses a transition check, an event row or the audit log."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class EventInline(admin.TabularInline):
    model = ApplicationEvent
    extra = 0
    can_delete = False
    readonly_fields = [
        "created_at",
        "actor",
        "from_state",
        "to_state",
        "variant",
        "public_message",
        "internal_note",
    ]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class DecisionInline(EventInline):
    model = SizeDecision
    readonly_fields = [
        "variant",
        "outcome",
        "reason",
        "first_approved_by",
        "decided_by",
        "decided_at",
    ]


@admin.register(Application)
class ApplicationAdmin(ReadOnlyAdmin):
    list_display = ["pk", "user", "state", "affiliation", "country", "submitted_at", "decided_at"]
    list_filter = ["state", "organization_type"]
    search_fields = ["user__email", "full_name", "affiliation"]
    list_select_related = ["user"]
    inlines = [DecisionInline, EventInline]
    # As the application form does: without it, Django 5.x warns on every change page.
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


@admin.register(Grant)
class GrantAdmin(ReadOnlyAdmin):
    list_display = ["user", "variant", "status", "starts_at", "ends_at", "revoked_at"]
    list_filter = ["status", "variant"]
    search_fields = ["user__email"]
    list_select_related = ["user", "variant"]


@admin.register(AccessToken)
class AccessTokenAdmin(ReadOnlyAdmin):
    list_display = ["user", "name", "prefix", "expires_at", "last_used_at", "revoked_at"]
    search_fields = ["user__email", "prefix"]
    exclude = ["key_hash"]
    list_select_related = ["user"]


@admin.register(LicenseAcceptance)
class LicenseAcceptanceAdmin(ReadOnlyAdmin):
    list_display = ["user", "version", "typed_name", "accepted_at", "ip"]
    search_fields = ["user__email"]
    list_select_related = ["user", "version"]


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["pk", "created_at", "actor_ref", "action", "target", "ip"]
    list_filter = ["action"]
    search_fields = ["actor_ref", "target"]
