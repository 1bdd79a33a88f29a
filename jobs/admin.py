from django.contrib import admin

from jobs.models import (Adapter, BaseModel, ChatAnswer, ChatRound, ChatSession, Dataset, FineTuneJob, JobEvent,
                         MetricPoint, Vote)


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ("name", "architecture", "parameters", "path")


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "rows", "schema", "created")
    list_filter = ("schema",)


@admin.register(FineTuneJob)
class FineTuneJobAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "owner", "status", "step", "total_steps", "attempts", "created")
    list_filter = ("status",)


admin.site.register([MetricPoint, JobEvent, Adapter, ChatSession, ChatRound, ChatAnswer, Vote])
