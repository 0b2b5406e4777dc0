from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.views import View

from apps.accounts.permissions import DATA_ROLES, RoleRequiredMixin
from apps.cohorts.selectors import exams_visible
from apps.cohorts.services.store import media_path
from apps.quantification.models import ExamQuantification


class MapFileView(RoleRequiredMixin, View):
    """A parametric map (ttp, slope) or the TAC plot of an exam."""

    required_roles = DATA_ROLES
    FIELDS = {"ttp": "ttp_map", "slope": "slope_map", "tac": "tac_plot"}

    def get(self, request, pk, which):
        exam = get_object_or_404(exams_visible(request.user), pk=pk)
        quant = get_object_or_404(ExamQuantification, exam=exam)
        field = getattr(quant, self.FIELDS.get(which, ""), None)
        if not field:
            raise Http404("no such map")
        return FileResponse(open(media_path(field.name), "rb"), filename=field.name.rsplit("/", 1)[-1])
