from django.urls import path

from weights import api

urlpatterns = [
    path("models/<slug:slug>/links", api.VariantLinksApi.as_view(), name="weights-api-links"),
]
