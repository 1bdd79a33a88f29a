from django.contrib import admin

from jobs.training.models import Adapter, FineTuneJob, JobEvent, MetricPoint


@admin.register(FineTuneJob)
class FineTuneJobAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "owner", "status", "step", "total_steps", "attempts", "created")
    list_filter = ("status",)


admin.site.register([MetricPoint, JobEvent, Adapter])
