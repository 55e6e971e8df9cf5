from django.apps import AppConfig


class ReviewConfig(AppConfig):
    name = "review"
    verbose_name = "Review console"

    def ready(self) -> None:
        from review import receivers  # noqa: F401  (computes flags when an application is submitted)
