"""URL configuration: pages, the REST API under /api/, the OpenAPI schema and its docs page."""
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.accounts.views import HomeView

urlpatterns = [
    path("", HomeView.as_view(), name="home"),
    path("accounts/", include("apps.accounts.urls")),
    path("cohort/", include("apps.cohorts.urls")),
    path("jobs/", include("apps.jobs.urls")),
    path("quantification/", include("apps.quantification.urls")),
    path("models/", include("apps.registry.urls")),
    path("studies/", include("reader_study.urls")),
    path("audit/", include("apps.audit.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include(("config.api_urls", "api"), namespace="api")),
]
