from django.apps import AppConfig


class DemoConfig(AppConfig):
    """Sets up the demo (the one app allowed to use all the others)."""

    name = "apps.demo"
    label = "demo"
