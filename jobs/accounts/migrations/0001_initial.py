"""Adopts the tables the legacy `jobs` app created (state only: the tables and rows are untouched)."""

import django.db.models.deletion
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
                    name="ApiKey",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("name", models.CharField(blank=True, max_length=100)),
                        (
                            "prefix",
                            models.CharField(help_text="the key's first 8 characters, to recognise it", max_length=8),
                        ),
                        (
                            "hashed",
                            models.CharField(help_text="sha256 hex of the full key", max_length=64, unique=True),
                        ),
                        ("created", models.DateTimeField(auto_now_add=True)),
                        ("last_used", models.DateTimeField(blank=True, null=True)),
                        ("revoked", models.BooleanField(default=False)),
                        (
                            "owner",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="api_keys",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={"db_table": "jobs_apikey", "ordering": ["-created"]},
                )
            ],
        )
    ]
