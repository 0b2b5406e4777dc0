"""Template context: the user's roles, for the navigation."""
from apps.accounts.permissions import is_admin, user_roles


def roles(request) -> dict:
    """``user_roles`` (site admins hold every role), ``is_admin_user`` (platform-wide: superusers)."""
    user = getattr(request, "user", None)
    return {"user_roles": user_roles(user), "is_admin_user": is_admin(user)}
