from django.contrib import admin
from django.urls import include, path

from portal import views
from weights import views as weights_views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("models/", include("catalog.urls")),  # the public model cards
    path("models/", include("weights.urls")),
    path("review/", include("review.urls")),
    path("accounts/", include("allauth.urls")),
    path("access/", include("accounts.urls")),
    path("dl/<str:link_id>", weights_views.download, name="download"),
    path("client/<str:filename>", weights_views.client_wheel_download, name="client_wheel"),
    path("api/v1/", include("weights.api_urls")),
    path("api/v1/", include("inference.api_urls")),
    path("api/v1/", include("evaluations.api_urls")),
    path("evaluations/", include("evaluations.urls")),
    path("v1/", include("inference.openai_urls")),
    path("playground/", include("inference.urls")),
]

handler400 = "portal.views.error_400"
handler403 = "portal.views.error_403"
handler404 = "portal.views.error_404"
handler500 = "portal.views.error_500"
