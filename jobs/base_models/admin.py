from django.contrib import admin

from jobs.base_models.models import BaseModel


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ("name", "architecture", "parameters", "path")
