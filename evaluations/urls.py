from django.urls import path

from evaluations import views

app_name = "evaluations"

urlpatterns = [
    path("", views.index, name="index"),
    path("start", views.start, name="start"),
    path("tasks/<str:task_id>.jsonl", views.task_file, name="task-file"),
    path("<uuid:evaluation_id>/", views.detail, name="detail"),
    path("<uuid:evaluation_id>/status.json", views.status, name="status"),
    path("<uuid:evaluation_id>/cancel", views.cancel, name="cancel"),
    path("<uuid:evaluation_id>/resume", views.resume, name="resume"),
    path("<uuid:evaluation_id>/items.csv", views.items, {"fmt": "csv"}, name="items-csv"),
    path("<uuid:evaluation_id>/items.json", views.items, {"fmt": "json"}, name="items-json"),
]
