"""Template context: the user's roles, for the navigation."""
from apps.accounts.permissions import user_roles


def roles(request) -> dict:
    held = user_roles(request.user) if hasattr(request, "user") else set()
    return {"user_roles": held, "is_admin_user": "admin" in held}
