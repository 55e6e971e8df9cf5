from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Generation jobs"

    def ready(self) -> None:
        from inference import receivers, schema  # noqa: F401  (receivers, API auth docs)
