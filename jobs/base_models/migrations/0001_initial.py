"""Adopts the tables the legacy `jobs` app created (state only: the tables and rows are untouched)."""

import uuid
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [("jobs", "0005_chatanswer_stopped")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="BaseModel",
                    fields=[
                        ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ("name", models.CharField(max_length=200, unique=True)),
                        ("path", models.CharField(max_length=500)),
                        ("architecture", models.CharField(blank=True, max_length=100)),
                        ("parameters", models.BigIntegerField(default=0)),
                        ("linear_modules", models.JSONField(default=list)),
                        ("has_chat_template", models.BooleanField(default=False)),
                        ("created", models.DateTimeField(auto_now_add=True)),
                    ],
                    options={"db_table": "jobs_basemodel", "ordering": ["name"]},
                )
            ],
        )
    ]
