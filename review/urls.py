from django.urls import path

from review import views

app_name = "review"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("bulk/", views.bulk, name="bulk"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("export/", views.export, name="export"),
    path("applications/<int:application_id>/", views.detail, name="detail"),
    path("applications/<int:application_id>/claim/", views.claim, name="claim"),
    path("applications/<int:application_id>/release/", views.release, name="release"),
    path("applications/<int:application_id>/take-over/", views.take_over, name="take_over"),
    path("applications/<int:application_id>/notes/", views.add_note, name="add_note"),
    path("applications/<int:application_id>/approve/", views.approve, name="approve"),
    path("applications/<int:application_id>/reject/", views.reject, name="reject"),
    path("applications/<int:application_id>/return/", views.return_for_changes, name="return"),
    path("grants/<int:grant_id>/revoke/", views.revoke, name="revoke"),
]
