from django.contrib import admin

from apps.accounts.models import Membership, Site


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    list_display = ("name", "display_name", "country", "created_at")
    search_fields = ("name", "display_name")
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "site", "role", "created_at")
    list_filter = ("role", "site")
    search_fields = ("user__username", "site__name")
