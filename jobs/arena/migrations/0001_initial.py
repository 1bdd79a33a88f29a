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
        ("training", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="ChatSession",
                    fields=[
                        ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ("created", models.DateTimeField(auto_now_add=True)),
                        (
                            "base_model",
                            models.ForeignKey(
                                blank=True,
                                help_text="for API completions of a base model alone (no job)",
                                null=True,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="chats",
                                to="base_models.basemodel",
                            ),
                        ),
                        (
                            "job",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="chats",
                                to="training.finetunejob",
                            ),
                        ),
                        (
                            "owner",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="chats",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={"db_table": "jobs_chatsession", "ordering": ["-created"]},
                ),
                migrations.CreateModel(
                    name="ChatRound",
                    fields=[
                        ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ("blind", models.BooleanField(default=False)),
                        ("created", models.DateTimeField(auto_now_add=True)),
                        (
                            "session",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="rounds",
                                to="arena.chatsession",
                            ),
                        ),
                    ],
                    options={"db_table": "jobs_chatround", "ordering": ["created"]},
                ),
                migrations.CreateModel(
                    name="ChatAnswer",
                    fields=[
                        ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        (
                            "side",
                            models.CharField(
                                choices=[("base", "Base"), ("adapter", "Adapter")],
                                help_text="base when job is empty, else adapter",
                                max_length=10,
                            ),
                        ),
                        (
                            "position",
                            models.PositiveSmallIntegerField(
                                default=0, help_text="screen column in its round, 0 = left"
                            ),
                        ),
                        ("prompt", models.TextField()),
                        ("settings", models.JSONField(default=dict)),
                        ("text", models.TextField(blank=True)),
                        (
                            "state",
                            models.CharField(
                                choices=[
                                    ("pending", "Pending"),
                                    ("streaming", "Streaming"),
                                    ("done", "Done"),
                                    ("failed", "Failed"),
                                ],
                                default="pending",
                                max_length=10,
                            ),
                        ),
                        (
                            "stopped",
                            models.BooleanField(
                                default=False, help_text="ended early by the stop button; text is what came before"
                            ),
                        ),
                        ("error", models.TextField(blank=True)),
                        (
                            "messages",
                            models.JSONField(
                                blank=True,
                                help_text="the full message history of an API completion (else built from the session)",
                                null=True,
                            ),
                        ),
                        ("created", models.DateTimeField(auto_now_add=True)),
                        (
                            "job",
                            models.ForeignKey(
                                blank=True,
                                help_text="the job whose adapter answered; empty: the base model alone",
                                null=True,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="chat_answers",
                                to="training.finetunejob",
                            ),
                        ),
                        (
                            "round",
                            models.ForeignKey(
                                blank=True,
                                help_text="the comparison round (none for an API completion)",
                                null=True,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="answers",
                                to="arena.chatround",
                            ),
                        ),
                        (
                            "session",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="answers",
                                to="arena.chatsession",
                            ),
                        ),
                    ],
                    options={"db_table": "jobs_chatanswer", "ordering": ["created", "side"]},
                ),
                migrations.CreateModel(
                    name="Vote",
                    fields=[
                        ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        (
                            "result",
                            models.CharField(
                                choices=[
                                    ("first", "first model better"),
                                    ("second", "second model better"),
                                    ("tie", "Tie"),
                                    ("both_bad", "both bad"),
                                ],
                                max_length=10,
                            ),
                        ),
                        ("blind", models.BooleanField(default=False)),
                        ("created", models.DateTimeField(auto_now_add=True)),
                        (
                            "base_model",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="votes",
                                to="base_models.basemodel",
                            ),
                        ),
                        (
                            "first_job",
                            models.ForeignKey(
                                blank=True,
                                help_text="empty: the base model alone",
                                null=True,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="votes_as_first",
                                to="training.finetunejob",
                            ),
                        ),
                        (
                            "owner",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="votes",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "round",
                            models.OneToOneField(
                                help_text="one vote per round",
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="vote",
                                to="arena.chatround",
                            ),
                        ),
                        (
                            "second_job",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="votes_as_second",
                                to="training.finetunejob",
                            ),
                        ),
                    ],
                    options={"db_table": "jobs_vote", "ordering": ["-created"]},
                ),
            ],
        )
    ]
