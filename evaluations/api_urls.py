from django.urls import path

from evaluations import api

app_name = "evaluations-api"

urlpatterns = [
    path("evaluations/tasks", api.TasksApi.as_view(), name="tasks"),
    path("evaluations/tasks/<str:task_id>", api.TaskDetailApi.as_view(), name="task-detail"),
    path("evaluations", api.EvaluationsApi.as_view(), name="evaluations"),
    path("evaluations/<str:evaluation_id>", api.EvaluationDetailApi.as_view(), name="detail"),
    path(
        "evaluations/<str:evaluation_id>/cancel", api.EvaluationCancelApi.as_view(), name="cancel"
    ),
    path(
        "evaluations/<str:evaluation_id>/resume", api.EvaluationResumeApi.as_view(), name="resume"
    ),
    path(
        "evaluations/<str:evaluation_id>/items",
        api.EvaluationItemsApi.as_view(),
        {"fmt": "json"},
        name="items",
    ),
    path(
        "evaluations/<str:evaluation_id>/items.csv",
        api.EvaluationItemsApi.as_view(),
        {"fmt": "csv"},
        name="items-csv",
    ),
]
