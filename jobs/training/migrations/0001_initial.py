"""Adopts the tables the legacy `jobs` app created (state only: the tables and rows are untouched)."""

import django.db.models.deletion
import uuid
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("jobs", "0005_chatanswer_stopped"),
        ("base_models", "0001_initial"),
        ("user_datasets", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="FineTuneJob",
                    fields=[
                        ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ("name", models.CharField(blank=True, max_length=200)),
                        (
                            "dataset_name",
                            models.CharField(
                                blank=True, help_text="kept if the dataset is deleted later", max_length=200
                            ),
                        ),
                        ("dataset_sha256", models.CharField(blank=True, max_length=64)),
                        (
                            "validation",
                            models.JSONField(
                                blank=True,
                                default=dict,
                                help_text="how the validation split was made: kind, percent, seed, rows",
                            ),
                        ),
                        ("config", models.JSONField(help_text="a worker.config.TrainConfig as a dict")),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("queued", "Queued"),
                                    ("running", "Running"),
                                    ("paused", "Paused"),
                                    ("succeeded", "Succeeded"),
                                    ("failed", "Failed"),
                                    ("cancelled", "Cancelled"),
                                ],
                                db_index=True,
                                default="queued",
                                max_length=20,
                            ),
                        ),
                        (
                            "stop_requested",
                            models.CharField(blank=True, help_text="cancel or pause, set by the web", max_length=10),
                        ),
                        ("attempts", models.PositiveIntegerField(default=0)),
                        ("error", models.TextField(blank=True)),
                        ("worker", models.CharField(blank=True, max_length=200)),
                        ("lease_until", models.DateTimeField(blank=True, null=True)),
                        ("step", models.PositiveIntegerField(default=0)),
                        ("total_steps", models.PositiveIntegerField(default=0)),
                        ("final_loss", models.FloatField(blank=True, null=True)),
                        ("created", models.DateTimeField(auto_now_add=True)),
                        ("started", models.DateTimeField(blank=True, null=True)),
                        ("finished", models.DateTimeField(blank=True, null=True)),
                        (
                            "base_model",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="jobs",
                                to="base_models.basemodel",
                            ),
                        ),
                        (
                            "dataset",
                            models.ForeignKey(
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="jobs",
                                to="user_datasets.dataset",
                            ),
                        ),
                        (
                            "owner",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="jobs",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={"db_table": "jobs_finetunejob", "ordering": ["-created"]},
                ),
                migrations.CreateModel(
                    name="Adapter",
                    fields=[
                        ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ("folder", models.CharField(help_text="adapter folder under MEDIA_ROOT", max_length=300)),
                        ("zip_file", models.CharField(help_text="zip under MEDIA_ROOT", max_length=300)),
                        ("size_bytes", models.BigIntegerField()),
                        ("sha256", models.CharField(max_length=64)),
                        ("created", models.DateTimeField(auto_now_add=True)),
                        (
                            "job",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="adapter",
                                to="training.finetunejob",
                            ),
                        ),
                    ],
                    options={"db_table": "jobs_adapter"},
                ),
                migrations.CreateModel(
                    name="JobEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("kind", models.CharField(max_length=30)),
                        ("message", models.TextField()),
                        ("created", models.DateTimeField(auto_now_add=True)),
                        (
                            "job",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="events",
                                to="training.finetunejob",
                            ),
                        ),
                    ],
                    options={"db_table": "jobs_jobevent", "ordering": ["id"]},
                ),
                migrations.CreateModel(
                    name="MetricPoint",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("step", models.PositiveIntegerField()),
                        ("epoch", models.FloatField(default=0)),
                        ("train_loss", models.FloatField(null=True)),
                        ("eval_loss", models.FloatField(null=True)),
                        ("lr", models.FloatField(null=True)),
                        ("tokens_per_s", models.FloatField(null=True)),
                        ("extra", models.JSONField(default=dict)),
                        ("created", models.DateTimeField(auto_now_add=True)),
                        (
                            "job",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="metrics",
                                to="training.finetunejob",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "jobs_metricpoint",
                        "ordering": ["step"],
                        "constraints": [models.UniqueConstraint(fields=("job", "step"), name="unique_metric_step")],
                    },
                ),
            ],
        )
    ]
