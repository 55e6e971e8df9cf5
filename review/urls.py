from django.urls import path

from review import cards, views

app_name = "review"

# The decisions (approve, reject, return, take over, revoke, bulk) are one view, `decide`,
# told which by the URL; `views.DECISIONS` declares each.
urlpatterns = [
    path("", views.queue, name="queue"),
    path("bulk/", views.decide, {"decision": "bulk"}, name="bulk"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("export/", views.export, name="export"),
    path("cards/", cards.card_list, name="cards"),
    path("cards/<slug:slug>/", cards.card_edit, name="card_edit"),
    path("applications/<int:application_id>/", views.detail, name="detail"),
    path("applications/<int:application_id>/claim/", views.claim, name="claim"),
    path("applications/<int:application_id>/release/", views.release, name="release"),
    path(
        "applications/<int:application_id>/take-over/",
        views.decide,
        {"decision": "take_over"},
        name="take_over",
    ),
    path("applications/<int:application_id>/notes/", views.add_note, name="add_note"),
    path(
        "applications/<int:application_id>/approve/",
        views.decide,
        {"decision": "approve"},
        name="approve",
    ),
    path(
        "applications/<int:application_id>/reject/",
        views.decide,
        {"decision": "reject"},
        name="reject",
    ),
    path(
        "applications/<int:application_id>/return/",
        views.decide,
        {"decision": "return"},
        name="return",
    ),
    path("grants/<int:grant_id>/revoke/", views.decide, {"decision": "revoke"}, name="revoke"),
]
