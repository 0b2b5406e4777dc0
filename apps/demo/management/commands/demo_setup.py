from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.accounts.models import Site
from apps.accounts.services import demo_users
from apps.cohorts.models import Cohort
from apps.registry.models import ModelVersion
from reader_study import services as study_services
from reader_study.models import Study

DEMO_STUDY = "demo-progression"


class Command(BaseCommand):
    help = (
        "Set up the demo: generate a synthetic multi-centre cohort (if not there), import it, "
        "prepare the exams, and create demo users whose passwords are printed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--out", default="var/demo", help="where the generated BIDS dataset goes")
        parser.add_argument("--patients", type=int, default=24)
        parser.add_argument("--sites", type=int, default=3)
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--study-cases", type=int, default=20,
                            help="cases of the open demo reader study (fewer when fewer are eligible)")

    def handle(self, *args, **opts):
        out = Path(opts["out"]).resolve()
        bids = out / "bids"
        if not (bids / "participants.tsv").exists():
            self.stdout.write(f"Generating {opts['patients']} synthetic patients at {opts['sites']} sites in {bids}")
            call_command("generate_cohort", out=str(bids), patients=opts["patients"], sites=opts["sites"],
                         seed=opts["seed"], stdout=self.stdout, stderr=self.stderr)
        self.stdout.write("Importing the cohort")
        call_command("import_bids", str(bids), cohort="demo", stdout=self.stdout, stderr=self.stderr)
        sites = list(Site.objects.all())
        if not sites:
            raise CommandError("no site after the import")
        if not ModelVersion.objects.exists():
            self.stdout.write("Training small models (progression: T/S max rule, logistic regression)")
            external = sites[-1].name if len(sites) > 2 else None
            for model in ("threshold", "logreg"):
                args = ["--task", "progression", "--cohort", "demo", "--model", model, "--bootstrap", "300"]
                call_command("train_classical", *args, *(["--external-site", external] if external else []),
                             stdout=self.stdout, stderr=self.stderr)
            latest = ModelVersion.objects.filter(algorithm="logreg").latest("created_at")
            call_command("predict", "--model", str(latest.pk), "--cohort", "demo",
                         stdout=self.stdout, stderr=self.stderr)
        users = demo_users(sites)
        self._demo_study(sites, n_cases=opts["study_cases"])
        width = max(len(u) for u, _, _ in users)
        self.stdout.write(self.style.SUCCESS("\nDemo users (passwords are new each time demo_setup runs):"))
        for username, password, what in users:
            self.stdout.write(f"  {username.ljust(width)}  {password}   {what}")

    def _demo_study(self, sites, *, n_cases: int) -> None:
        """An open sequential study the printed reader accounts can read at once (kept across runs)."""
        study = Study.objects.filter(slug=DEMO_STUDY).first()
        if study is not None:
            self.stdout.write(f"Demo reader study exists: /studies/{study.slug}/ ({study.get_status_display()})")
            return
        model = ModelVersion.objects.filter(task="progression", algorithm="logreg").order_by("-created_at").first()
        cohort = Cohort.objects.filter(name="demo").first()
        if model is None or cohort is None:
            raise CommandError("no progression model or demo cohort: cannot create the demo reader study")
        users = get_user_model().objects
        coordinator = users.get(username=f"coord-{sites[0].name}")
        readers = list(users.filter(username__in=["reader1", "reader2", "reader3"]))
        try:
            with transaction.atomic():
                study = study_services.study_create(
                    title="Demo: progression or treatment-related change?", slug=DEMO_STUDY,
                    question="Suspected recurrence of a treated glioma: is this progression (positive) or "
                             "treatment-related change (negative)?",
                    cohort=cohort, user=coordinator, design="sequential", model_version=model, seed=2024,
                    washout_days=0)
                eligible = study_services._eligible_exams(study).count()
                study_services.study_cases_set(study=study, user=coordinator, n_cases=min(n_cases, eligible))
                study_services.study_readers_set(study=study, user=coordinator, readers=readers)
                study_services.study_open(study=study, user=coordinator)
        except study_services.StudyError as exc:
            raise CommandError(f"demo reader study: {exc}") from exc
        n_sites = len({c.exam.patient.site_id for c in study.cases.select_related("exam__patient")})
        self.stdout.write(self.style.SUCCESS(
            f"Demo reader study open: /studies/{study.slug}/ ({study.cases.count()} cases from {n_sites} sites, "
            f"readers {', '.join(sorted(u.username for u in readers))}; they find it under My worklist)"))
