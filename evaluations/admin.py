from django.contrib import admin

from evaluations.models import Evaluation, EvaluationTask


@admin.register(EvaluationTask)
class EvaluationTaskAdmin(admin.ModelAdmin):
    """Read-only: tasks are uploaded and checked through `task_upload`."""

    list_display = ["name", "kind", "owner", "shared", "item_count", "created_at"]
    list_filter = ["kind", "shared"]
    search_fields = ["name", "owner__email", "sha256"]
    exclude = ["content", "items"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Evaluation)
class EvaluationAdmin(admin.ModelAdmin):
    """Read-only: evaluations change state through the services only."""

    list_display = ["id", "task", "variant", "owner", "state", "items_done", "items_total"]
    list_filter = ["state", "variant", "scored_by"]
    search_fields = ["id", "owner__email", "task__name"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
