from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.views import View
from django.views.generic import DetailView, ListView

from apps.accounts.permissions import MODEL_ROLES, RoleRequiredMixin
from apps.cohorts.services.store import media_path
from apps.registry.models import ModelVersion
from apps.registry.selectors import foundation_summary, model_metrics_visible

METRIC_ORDER = ["auc", "accuracy", "sensitivity", "specificity", "ppv", "npv"]


class ModelListView(RoleRequiredMixin, ListView):
    required_roles = MODEL_ROLES
    template_name = "registry/model_list.html"
    context_object_name = "models"
    queryset = ModelVersion.objects.select_related("training_cohort", "external_site")


class ModelDetailView(RoleRequiredMixin, DetailView):
    required_roles = MODEL_ROLES
    template_name = "registry/model_detail.html"
    context_object_name = "model"
    queryset = ModelVersion.objects.select_related("training_cohort", "external_site", "parent", "created_by")

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        # Only what the user may see: per-case rows follow the exams' site scoping.
        metrics = ctx["metrics"] = model_metrics_visible(self.request.user, self.object)
        evaluations = []
        for key in ("cv", "internal", "external"):  # internal: WP3 held-out patients
            ev = metrics.get(key)
            if ev:
                rows = [(m, ev["metrics"][m]) for m in METRIC_ORDER if m in ev["metrics"]]
                plots = [(k, k.split("_", 1)[1]) for k in self.object.plots if k.startswith(key + "_")]
                evaluations.append({"key": key, "name": ev["name"], "n": ev["n"], "n_positive": ev["n_positive"],
                                    "brier": ev["brier"], "rows": rows, "plots": plots})
        ctx["evaluations"] = evaluations
        ctx["importance"] = list(metrics.get("importance", {}).items())[:10]
        ctx["n_predictions"] = self.object.predictions.count()
        if self.object.family == "foundation" and self.object.task == "pretraining":
            ctx["foundation"] = foundation_summary(self.request.user, self.object)
        from apps.registry.deep import label_efficiency

        ctx["label_efficiency"] = label_efficiency(self.object)
        return ctx


class ModelPlotView(RoleRequiredMixin, View):
    required_roles = MODEL_ROLES

    def get(self, request, pk, name):
        model = get_object_or_404(ModelVersion, pk=pk)
        stored = model.plots.get(name)
        if not stored:
            raise Http404("no such plot")
        return FileResponse(open(media_path(stored), "rb"), content_type="image/png")


class LabelEfficiencyPlotView(RoleRequiredMixin, View):
    """The learning curve (external AUC vs label fraction, every family) of a WP3 version's runs."""

    required_roles = MODEL_ROLES

    def get(self, request, pk):
        from apps.registry.deep import label_efficiency_png

        png = label_efficiency_png(get_object_or_404(ModelVersion.objects.select_related("external_site"), pk=pk))
        if png is None:
            raise Http404("no learning curve: fewer than two runs on this external site")
        return HttpResponse(png, content_type="image/png")
