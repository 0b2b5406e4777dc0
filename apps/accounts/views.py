from django.contrib.auth.mixins import LoginRequiredMixin
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
