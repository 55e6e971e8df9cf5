from django.urls import path, re_path

from inference import openai_api

app_name = "openai"

urlpatterns = [
    path("models", openai_api.ModelsApi.as_view(), name="models"),
    path("models/<str:model>", openai_api.ModelDetailApi.as_view(), name="model"),
    path(
        "models/<str:model>/tokenizer.model",
        openai_api.TokenizerFileApi.as_view(),
        name="tokenizer-file",
    ),
    path("completions", openai_api.CompletionsApi.as_view(), name="completions"),
    path("tokenize", openai_api.TokenizeApi.as_view(), name="tokenize"),
    path("detokenize", openai_api.DetokenizeApi.as_view(), name="detokenize"),
    path("chat/completions", openai_api.ChatCompletionsApi.as_view(), name="chat-completions"),
    # Last: any other path is a JSON 404, not the site's HTML page.
    re_path(r"^.*$", openai_api.not_found, name="not-found"),
]
