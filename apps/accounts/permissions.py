"""The permission rules of AminoPET, in one place.

Views declare which roles may use them (``required_roles``, and ``write_roles`` for unsafe API
methods); :class:`RoleRequiredMixin` (pages) and :class:`RolePermission` (API) enforce them;
selectors scope querysets to the sites where the user holds a role.

Administration is scoped like every other role: platform-wide administration is the superuser
only (:func:`is_admin`); an ``admin`` membership gives every role's rights at its own site and no
other (an admin of Nancy is a coordinator, researcher, statistician and reader of Nancy).
tests/apps/test_permissions.py walks every page and endpoint for every role.
"""
from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.mixins import AccessMixin
from django.db.models import QuerySet
from rest_framework.permissions import SAFE_METHODS, BasePermission

from apps.accounts.models import Membership, Role, Site

#: Who sees what, as data. Pages and endpoints pick one of these.
DATA_ROLES = (Role.COORDINATOR, Role.RESEARCHER)  # pseudonymous images and labels of their sites
MANAGE_ROLES = (Role.COORDINATOR,)  # import, QC, cohorts
RESULTS_ROLES = (Role.STATISTICIAN, Role.COORDINATOR, Role.RESEARCHER)  # de-identified results
MODEL_ROLES = (Role.RESEARCHER,)  # model registry, training
ANY_ROLE = tuple(Role)


def user_roles(user) -> set[str]:
    """Roles the user holds at some site; an ``admin`` membership holds every role at its site.

    ``admin`` is in the set for superusers and site admins alike (navigation); rights on objects
    always go through :func:`sites_for` / :func:`can_manage_site`, which are site-scoped.
    """
    if not getattr(user, "is_authenticated", False):
        return set()
    cached = getattr(user, "_aminopet_roles", None)
    if cached is None:
        cached = set(Membership.objects.filter(user=user).values_list("role", flat=True))
        if user.is_superuser or Role.ADMIN in cached:
            cached |= set(Role.values)
        user._aminopet_roles = cached
    return cached


def is_admin(user) -> bool:
    """Platform-wide administration: superusers only (an ``admin`` membership is site-scoped)."""
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.is_superuser)


def has_role(user, roles: Iterable[str]) -> bool:
    """True when the user holds one of ``roles`` at some site (site admins hold them all)."""
    return is_admin(user) or bool(user_roles(user) & set(roles))


def sites_for(user, roles: Iterable[str] = DATA_ROLES) -> QuerySet[Site]:
    """Sites where the user holds one of ``roles`` or is a site admin (every site for a superuser)."""
    if is_admin(user):
        return Site.objects.all()
    if not getattr(user, "is_authenticated", False):
        return Site.objects.none()
    held = {*roles, Role.ADMIN}
    return Site.objects.filter(memberships__user=user, memberships__role__in=list(held)).distinct()


def can_manage_site(user, site: Site) -> bool:
    """Import, QC and cohort work at ``site``: its coordinators and admins, and superusers."""
    return is_admin(user) or Membership.objects.filter(
        user=user, site=site, role__in=[*MANAGE_ROLES, Role.ADMIN]
    ).exists()


class RoleRequiredMixin(AccessMixin):
    """Page views: anonymous users go to the login page, users without a role get 403."""

    required_roles: tuple[str, ...] = ANY_ROLE
    raise_exception = False

    def dispatch(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        if not has_role(request.user, self.required_roles):
            self.raise_exception = True
            return self.handle_no_permission()
        return super().dispatch(request, *args, **kwargs)


class RolePermission(BasePermission):
    """API views: ``required_roles`` to read, ``write_roles`` (default: the same) to write."""

    def has_permission(self, request, view) -> bool:
        if not request.user.is_authenticated:
            return False
        roles = getattr(view, "required_roles", ANY_ROLE)
        if request.method not in SAFE_METHODS:
            roles = getattr(view, "write_roles", roles)
        return has_role(request.user, roles)
