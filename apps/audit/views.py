"""The audit trail page: who viewed, downloaded or changed what (coordinators: their sites)."""
from __future__ import annotations

from django.views.generic import ListView

from apps.accounts.models import Role
from apps.accounts.permissions import RoleRequiredMixin
from apps.audit.selectors import audit_events_filtered

FILTERS = ("action", "actor", "object_type", "object_id")


class AuditListView(RoleRequiredMixin, ListView):
    required_roles = (Role.COORDINATOR,)
    template_name = "audit/event_list.html"
    context_object_name = "events"
    paginate_by = 100

    def get_queryset(self):
        params = {k: self.request.GET.get(k, "").strip()[:64] for k in FILTERS}
        return audit_events_filtered(self.request.user, **params)

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["filters"] = {k: self.request.GET.get(k, "") for k in FILTERS}
        query = self.request.GET.copy()
        query.pop("page", None)
        ctx["query"] = query.urlencode()
        return ctx
