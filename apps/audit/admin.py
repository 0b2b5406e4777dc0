from django.contrib import admin

from apps.audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the trail can be searched, never edited."""

    list_display = ("at", "actor", "action", "object_type", "object_repr", "site_id", "ip")
    list_filter = ("action", "object_type")
    search_fields = ("actor", "object_repr", "object_id")
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
