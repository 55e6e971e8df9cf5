from django.urls import path

from inference import openai_api

app_name = "openai"

urlpatterns = [
    path("models", openai_api.ModelsApi.as_view(), name="models"),
    path("models/<str:model>", openai_api.ModelDetailApi.as_view(), name="model"),
    path("completions", openai_api.CompletionsApi.as_view(), name="completions"),
]
