from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import DetailView, ListView

from apps.accounts.permissions import ANY_ROLE, RoleRequiredMixin
from apps.jobs.selectors import jobs_visible
from apps.jobs.services import JobError, job_is_stale, job_retry


class JobListView(RoleRequiredMixin, ListView):
    required_roles = ANY_ROLE
    template_name = "jobs/job_list.html"
    context_object_name = "jobs"
    paginate_by = 50

    def get_queryset(self):
        return jobs_visible(self.request.user)


class JobDetailView(RoleRequiredMixin, DetailView):
    required_roles = ANY_ROLE
    template_name = "jobs/job_detail.html"
    context_object_name = "job"

    def get_queryset(self):
        return jobs_visible(self.request.user)

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["stale"] = job_is_stale(self.object)
        return ctx


class JobStatusView(RoleRequiredMixin, View):
    """Polled by the jobs pages to show progress live."""

    required_roles = ANY_ROLE

    def get(self, request, pk):
        job = get_object_or_404(jobs_visible(request.user), pk=pk)
        return JsonResponse({
            "id": job.pk, "kind": job.kind, "status": job.status, "progress": job.progress,
            "message": job.message, "finished": job.is_finished, "result": job.result,
            "stale": job_is_stale(job),
            "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
        })


class JobRetryView(RoleRequiredMixin, View):
    required_roles = ANY_ROLE
    http_method_names = ["post"]

    def post(self, request, pk):
        job = get_object_or_404(jobs_visible(request.user), pk=pk)
        try:
            job_retry(job=job)
            messages.success(request, f"Job {job.pk} queued again.")
        except JobError as exc:
            messages.error(request, str(exc))
        return redirect("jobs:detail", pk=job.pk)
