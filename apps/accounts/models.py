"""Sites (hospitals), memberships and roles."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Role(models.TextChoices):
    READER = "reader", "Reader (physician)"
    COORDINATOR = "coordinator", "Study coordinator"
    STATISTICIAN = "statistician", "Statistician"
    RESEARCHER = "researcher", "ML researcher"
    ADMIN = "admin", "Administrator"


class Site(models.Model):
    """A hospital or centre contributing exams and readers."""

    name = models.SlugField(max_length=64, unique=True, help_text="Short identifier, e.g. 'nancy'.")
    display_name = models.CharField(max_length=200, blank=True)
    country = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.display_name or self.name


class Membership(models.Model):
    """A user's role at a site. A user may hold several roles at several sites."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["site__name", "role"]
        constraints = [
            models.UniqueConstraint(fields=["user", "site", "role"], name="membership_unique_role"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} — {self.role} at {self.site}"
