from pathlib import Path

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from apps.accounts.models import Site
from apps.accounts.services import demo_users
from apps.registry.models import ModelVersion


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
        width = max(len(u) for u, _, _ in users)
        self.stdout.write(self.style.SUCCESS("\nDemo users (passwords are new each time demo_setup runs):"))
        for username, password, what in users:
            self.stdout.write(f"  {username.ljust(width)}  {password}   {what}")
