from django.contrib import admin

from jobs.accounts.models import ApiKey, Quota


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    """Per-user limits; an empty field keeps the installation's default (settings QUOTA_*)."""

    list_display = (
        "user",
        "active_jobs",
        "running_jobs",
        "compute_seconds_per_day",
        "storage_bytes",
        "api_keys",
        "webhooks",
    )
    search_fields = ("user__username",)


admin.site.register(ApiKey)
