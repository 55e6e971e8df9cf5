from django.urls import path

from weights import views

app_name = "weights"
urlpatterns = [
    path("", views.variant_list, name="variant_list"),
    path("<slug:slug>/", views.variant_detail, name="variant_detail"),
    path("<slug:slug>/checklist.chk", views.checklist, name="checklist"),
    path("<slug:slug>/manifest.json", views.manifest, name="manifest"),
    path("<slug:slug>/download.sh", views.download_script, name="download_script"),
]
