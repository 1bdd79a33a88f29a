from django.contrib import admin

from jobs.datasets.models import Dataset


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "rows", "schema", "created")
    list_filter = ("schema",)
