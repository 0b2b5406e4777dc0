"""Reads on the cohort, scoped to what the user may see (rules in apps.accounts.permissions)."""
from __future__ import annotations

from django.db.models import Count, Prefetch, Q, QuerySet

from apps.accounts.models import Site
from apps.accounts.permissions import DATA_ROLES, is_admin, sites_for
from apps.cohorts.models import Cohort, Exam, Mask, Patient, Volume


def sites_visible(user) -> QuerySet[Site]:
    return sites_for(user, DATA_ROLES).annotate(n_patients=Count("patients", distinct=True))


def patients_visible(user) -> QuerySet[Patient]:
    return Patient.objects.filter(site__in=sites_for(user, DATA_ROLES)).select_related("site")


def exams_visible(user) -> QuerySet[Exam]:
    return (
        Exam.objects.filter(patient__site__in=sites_for(user, DATA_ROLES))
        .select_related("patient__site")
        .prefetch_related(
            Prefetch("volumes", queryset=Volume.objects.order_by("space", "kind")),
            Prefetch("masks", queryset=Mask.objects.select_related("grid").order_by("space", "kind")),
        )
    )


def volumes_visible(user) -> QuerySet[Volume]:
    return Volume.objects.filter(exam__patient__site__in=sites_for(user, DATA_ROLES)).select_related("exam")


def masks_visible(user) -> QuerySet[Mask]:
    return Mask.objects.filter(exam__patient__site__in=sites_for(user, DATA_ROLES))


def cohorts_visible(user) -> QuerySet[Cohort]:
    """Admins see every cohort; others those holding an exam of their sites."""
    if is_admin(user):
        return Cohort.objects.annotate(n_exams=Count("exams", distinct=True))
    sites = sites_for(user, DATA_ROLES)
    # n_exams counts only the user's sites' exams: another site's share of a cohort is not theirs to see.
    mine = Cohort.objects.filter(exams__patient__site__in=sites).values("pk")
    return Cohort.objects.filter(pk__in=mine).annotate(
        n_exams=Count("exams", filter=Q(exams__patient__site__in=sites), distinct=True)
    )
