"""Adopts the tables the legacy `jobs` app created (state only: the tables and rows are untouched)."""

import django.db.models.deletion
import uuid
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [("jobs", "0005_chatanswer_stopped"), migrations.swappable_dependency(settings.AUTH_USER_MODEL)]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="Dataset",
                    fields=[
                        ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ("name", models.CharField(max_length=200)),
                        (
                            "original_name",
                            models.CharField(
                                blank=True, help_text="the uploaded file's name, for display", max_length=255
                            ),
                        ),
                        (
                            "file",
                            models.CharField(
                                help_text="the original file under MEDIA_ROOT, named by an opaque id", max_length=300
                            ),
                        ),
                        (
                            "normalized_file",
                            models.CharField(
                                blank=True,
                                help_text="the examples as normalised JSONL (messages or text per line)",
                                max_length=300,
                            ),
                        ),
                        ("format", models.CharField(max_length=20)),
                        ("schema", models.CharField(max_length=30)),
                        (
                            "mapping",
                            models.JSONField(
                                blank=True, default=dict, help_text="column mapping when no schema matched"
                            ),
                        ),
                        ("rows", models.PositiveIntegerField()),
                        ("size_bytes", models.BigIntegerField()),
                        ("sha256", models.CharField(max_length=64)),
                        ("stats", models.JSONField(default=dict)),
                        ("created", models.DateTimeField(auto_now_add=True)),
                        (
                            "owner",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="datasets",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={"db_table": "jobs_dataset", "ordering": ["-created"]},
                )
            ],
        )
    ]
