from django.contrib import admin

from inference.models import GenerationJob, JobEvent


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    readonly_fields = ["created_at", "from_state", "to_state", "worker", "message"]


@admin.register(GenerationJob)
class GenerationJobAdmin(admin.ModelAdmin):
    """Read-only: jobs change state through the services only."""

    list_display = ["id", "owner", "variant", "state", "attempts", "created_at", "worker"]
    list_filter = ["state", "variant", "source"]
    search_fields = ["id", "owner__email"]
    inlines = [JobEventInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
