from django.contrib import admin

from weights.models import DownloadEvent, DownloadLink


@admin.register(DownloadLink)
class DownloadLinkAdmin(admin.ModelAdmin):
    list_display = [
        "user", "file", "created_at", "expires_at", "use_count", "max_uses", "revoked_at",
    ]  # fmt: skip
    list_filter = ["file__variant"]
    search_fields = ["user__email"]
    # The id is the link itself: shown to nobody, even staff.
    exclude = ["id"]
    readonly_fields = ["user", "file", "created_at", "expires_at", "use_count", "max_uses"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(DownloadEvent)
class DownloadEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "user", "file", "ip", "user_agent"]
    list_filter = ["file__variant"]
    search_fields = ["user__email", "ip"]
    readonly_fields = ["user", "file", "link", "created_at", "ip", "user_agent"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
