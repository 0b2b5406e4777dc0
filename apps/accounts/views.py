from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import JsonResponse
from django.views import defaults
from django.views.generic import TemplateView

from apps.accounts.models import Membership
from apps.accounts.permissions import user_roles


class HomeView(LoginRequiredMixin, TemplateView):
    """Landing page: what each of the user's roles can do next."""

    template_name = "home.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["memberships"] = Membership.objects.filter(user=self.request.user).select_related("site")
        ctx["roles"] = sorted(user_roles(self.request.user))
        return ctx


# --- Error answers (config/urls.py handler403/404/500) ----------------------------------------
# Pages get templates/403.html, 404.html, 500.html (the site's look, never a URL list); anything
# under /api/ gets the API's one JSON error shape, even for a URL no API route matches.

def _api_error(request, code: str, message: str, status: int):
    if not request.path.startswith("/api/"):
        return None
    return JsonResponse({"error": {"code": code, "message": message, "details": {}}}, status=status)


def permission_denied(request, exception=None):
    return (_api_error(request, "permission_denied", "You do not have permission to perform this action.", 403)
            or defaults.permission_denied(request, exception))


def page_not_found(request, exception=None):
    return _api_error(request, "not_found", "Not found.", 404) or defaults.page_not_found(request, exception)


def server_error(request):
    return _api_error(request, "server_error", "Server error; it has been logged.", 500) or defaults.server_error(request)
