"""URL configuration: pages, the REST API under /api/, the OpenAPI schema and its docs page."""
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from apps.accounts.views import HomeView

urlpatterns = [
    path("", HomeView.as_view(), name="home"),
    path("accounts/", include("apps.accounts.urls")),
    path("cohort/", include("apps.cohorts.urls")),
    path("jobs/", include("apps.jobs.urls")),
    path("quantification/", include("apps.quantification.urls")),
    path("models/", include("apps.registry.urls")),
    path("subregions/", include("apps.subregions.urls")),
    path("studies/", include("reader_study.urls")),
    path("audit/", include("apps.audit.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its script as a file, so the Content-Security-Policy needs no inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include(("config.api_urls", "api"), namespace="api")),
]

# Error answers: the site's pages, or the API's JSON error shape under /api/ (apps/accounts/views.py).
handler403 = "apps.accounts.views.permission_denied"
handler404 = "apps.accounts.views.page_not_found"
handler500 = "apps.accounts.views.server_error"
