"""``manage.py reap_jobs``: requeue or fail the jobs of lost workers now (workers also do it)."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.jobs.services import job_reap_stale, job_resend_lost_messages


class Command(BaseCommand):
    help = ("Requeue (while attempts remain) or fail RUNNING jobs whose worker stopped heart-beating, "
            "and remove their scratch folders; send again the message of jobs still queued long after it was "
            "sent (a restarted broker loses queued messages). Workers do this at start and every minute.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=float, default=None, metavar="SECONDS",
                            help="heartbeat age that counts as lost (default: AMINOPET_JOB_LEASE_SECONDS)")

    def handle(self, *args: Any, **options: Any) -> None:
        from datetime import timedelta

        seconds = options["older_than"]
        if seconds is not None and seconds <= 0:
            raise CommandError("--older-than must be a positive number of seconds")
        reaped = job_reap_stale(older_than=timedelta(seconds=seconds) if seconds is not None else None)
        for job in reaped:
            self.stdout.write(f"job {job.pk} ({job.kind}) on {job.worker or '?'} at {job.progress}%: reaped")
        self.stdout.write(self.style.SUCCESS(f"{len(reaped)} job(s) of lost workers reaped"))
        resent = job_resend_lost_messages()
        for job in resent:
            self.stdout.write(f"job {job.pk} ({job.kind}) still queued: message sent again")
        if resent:
            self.stdout.write(self.style.SUCCESS(f"{len(resent)} queued job(s) sent again"))
