"""Reader-study pages under /studies/ (coordinators, readers, statisticians)."""
from django.urls import path  # noqa: F401

app_name = "reader_study"

urlpatterns: list = [
]
