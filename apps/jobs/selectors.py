from django.db.models import Q, QuerySet

from apps.accounts.permissions import MANAGE_ROLES, is_admin, sites_for
from apps.jobs.models import Job


def jobs_visible(user) -> QuerySet[Job]:
    """Admins see every job; others their own and those of sites they coordinate."""
    jobs = Job.objects.select_related("created_by", "site")
    if not getattr(user, "is_authenticated", False):
        return jobs.none()
    if is_admin(user):
        return jobs
    return jobs.filter(Q(created_by=user) | Q(site__in=sites_for(user, MANAGE_ROLES)))
