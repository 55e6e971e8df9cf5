from django.urls import path

from catalog import views

app_name = "catalog"
urlpatterns = [
    path("<slug:slug>/card/", views.card_detail, name="card"),
    path("<slug:slug>/card/history/", views.card_history, name="card_history"),
    path("<slug:slug>/card/v<int:version>/", views.card_detail, name="card_version"),
    path("<slug:slug>/card/tables/<slug:key>.<str:fmt>", views.card_table, name="card_table"),
    path(
        "<slug:slug>/card/v<int:version>/tables/<slug:key>.<str:fmt>",
        views.card_table,
        name="card_version_table",
    ),
]
