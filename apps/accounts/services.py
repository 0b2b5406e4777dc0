"""Writes on accounts: users with roles at sites."""
from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.db import transaction

from apps.accounts.models import Membership, Role, Site


@transaction.atomic
def user_with_roles(*, username: str, password: str, roles: list[tuple[Site, str]], superuser: bool = False):
    """Create or update a user, set the password, and give exactly these (site, role) memberships."""
    User = get_user_model()
    user, _ = User.objects.get_or_create(username=username)
    user.set_password(password)
    user.is_superuser = user.is_staff = superuser
    user.save()
    Membership.objects.filter(user=user).delete()
    for site, role in roles:
        if role not in Role.values:
            raise ValueError(f"unknown role {role!r}")
        Membership.objects.create(user=user, site=site, role=role)
    return user


def demo_users(sites: list[Site]) -> list[tuple[str, str, str]]:
    """The demo's users, one per role (readers at every site); returns (username, password, what)."""
    made = []

    def add(username, roles, what, superuser=False):
        password = secrets.token_urlsafe(9)
        user_with_roles(username=username, password=password, roles=roles, superuser=superuser)
        made.append((username, password, what))

    add("admin", [], "administrator (everything, Django admin)", superuser=True)
    for site in sites:
        add(f"coord-{site.name}", [(site, Role.COORDINATOR)], f"coordinator of {site.name}")
    for i in range(1, 4):
        add(f"reader{i}", [(site, Role.READER) for site in sites[i - 1 : i] or sites[:1]], "reader (physician)")
    add("stats", [(sites[0], Role.STATISTICIAN)], "statistician")
    add("research", [(s, Role.RESEARCHER) for s in sites], "ML researcher (all sites)")
    return made
