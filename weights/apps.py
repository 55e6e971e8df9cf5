from django.apps import AppConfig


class WeightsConfig(AppConfig):
    name = "weights"
    verbose_name = "Model catalog and weights"
