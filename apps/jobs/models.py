"""Background jobs: one row per long task (import, training, inference, analysis).

A running job holds a lease: its worker refreshes ``heartbeat_at`` every few seconds, and a job whose
heartbeat is older than ``settings.AMINOPET_JOB_LEASE_SECONDS`` belongs to a lost worker (killed,
out of memory, machine gone); ``apps.jobs.services.job_reap_stale`` requeues or fails it.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class Job(models.Model):
    kind = models.CharField(max_length=64, help_text="Handler name, e.g. import_bids")
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    message = models.CharField(max_length=500, blank=True)
    log = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    site = models.ForeignKey(
        "accounts.Site", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    task_id = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True, help_text="host:pid of the process running it")
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life of the running attempt (its lease)"
    )
    enqueued_at = models.DateTimeField(
        null=True, blank=True,
        help_text="When its message was last sent to the broker (resent when no worker took it: a restarted "
                  "broker without persistence loses queued messages)",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="job_status_valid"),
            models.CheckConstraint(condition=Q(progress__lte=100), name="job_progress_0_100"),
        ]
        indexes = [
            models.Index(fields=["status", "kind"]),
            models.Index(fields=["status", "heartbeat_at"], name="job_status_heartbeat"),
            models.Index(fields=["status", "enqueued_at"], name="job_status_enqueued"),
        ]

    def __str__(self) -> str:
        return f"Job {self.pk} {self.kind} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
