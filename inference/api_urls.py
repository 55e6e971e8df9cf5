from csp.decorators import csp_update
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from inference import api

app_name = "inference-api"

# Swagger UI (served from drf-spectacular-sidecar, with its start-up script as a separate
# file) sets style attributes from JavaScript; scripts stay restricted to our own origin.
docs = csp_update({"style-src": ["'unsafe-inline'"]})(
    SpectacularSwaggerSplitView.as_view(url_name="inference-api:schema")
)

urlpatterns = [
    path("models", api.GenerationModelsApi.as_view(), name="models"),
    path("jobs", api.JobsApi.as_view(), name="jobs"),
    path("jobs/<str:job_id>", api.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<str:job_id>/cancel", api.JobCancelApi.as_view(), name="job-cancel"),
    path("jobs/<str:job_id>/stream", api.JobStreamApi.as_view(), name="job-stream"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", docs, name="docs"),
]
