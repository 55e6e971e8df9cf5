from django.urls import path

from weights import views

app_name = "weights"
urlpatterns = [
    path("", views.variant_list, name="variant_list"),
    path("<slug:slug>/", views.variant_detail, name="variant_detail"),
]
