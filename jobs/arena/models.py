"""Comparisons: sessions, rounds (one prompt to every model at once), answers and votes."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from jobs.base_models.models import BaseModel
from jobs.training.models import FineTuneJob


class ChatSession(models.Model):
    """One comparison: the same prompts to two or three models on one base (the base alone and/or
    finished adapters); `job` is the job whose page started it (or the API completion's model)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chats")
    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, null=True, blank=True, related_name="chats")
    base_model = models.ForeignKey(
        BaseModel,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="chats",
        help_text="for API completions of a base model alone (no job)",
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_chatsession"  # tables keep the names of the single app this project once had
        ordering = ["-created"]


class ChatRound(models.Model):
    """One prompt sent at once to every model of a comparison: the unit a vote is cast on.
    In a blind round the models' screen order was shuffled and is hidden until the vote."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="rounds")
    blind = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_chatround"
        ordering = ["created"]


class ChatAnswer(models.Model):
    class Side(models.TextChoices):
        BASE = "base"
        ADAPTER = "adapter"

    class State(models.TextChoices):
        PENDING = "pending"
        STREAMING = "streaming"
        DONE = "done"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="answers")
    side = models.CharField(max_length=10, choices=Side.choices, help_text="base when job is empty, else adapter")
    job = models.ForeignKey(
        FineTuneJob,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="chat_answers",
        help_text="the job whose adapter answered; empty: the base model alone",
    )
    round = models.ForeignKey(
        ChatRound,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="answers",
        help_text="the comparison round (none for an API completion)",
    )
    position = models.PositiveSmallIntegerField(default=0, help_text="screen column in its round, 0 = left")
    prompt = models.TextField()
    settings = models.JSONField(default=dict)
    text = models.TextField(blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    stopped = models.BooleanField(default=False, help_text="ended early by the stop button; text is what came before")
    error = models.TextField(blank=True)
    note = models.CharField(
        max_length=300, blank=True, help_text="what was left out to fit the model's context, if anything"
    )
    messages = models.JSONField(
        null=True, blank=True, help_text="the full message history of an API completion (else built from the session)"
    )
    stats = models.JSONField(
        default=dict, blank=True, help_text="tokens generated, first_token_ms and total_ms, timed by the infer worker"
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_chatanswer"
        ordering = ["created", "side"]


class Vote(models.Model):
    """The owner's verdict on one two-model round, stored against the two models, never the screen
    sides: `first_job` / `second_job` in canonical order (the base model alone, empty, first; then
    adapters by job id) whatever order the screen showed them in."""

    class Result(models.TextChoices):
        FIRST = "first", "first model better"
        SECOND = "second", "second model better"
        TIE = "tie"
        BOTH_BAD = "both_bad", "both bad"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="votes")
    round = models.OneToOneField(
        ChatRound, on_delete=models.CASCADE, related_name="vote", help_text="one vote per round"
    )
    base_model = models.ForeignKey(BaseModel, on_delete=models.CASCADE, related_name="votes")
    first_job = models.ForeignKey(
        FineTuneJob,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="votes_as_first",
        help_text="empty: the base model alone",
    )
    second_job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="votes_as_second")
    result = models.CharField(max_length=10, choices=Result.choices)
    blind = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_vote"
        ordering = ["-created"]


class Judgement(models.Model):
    """A judge model comparing two models (the base and an adapter, or two adapters), named as the API names them
    (a base model's name or an `ft:` id), on a list of prompts: every pair judged in both orders
    (jobs.arena.judging). Long work on the background worker, claimed like an export: a run takes the row with a
    token and a lease on the database's clock and writes its progress only while it holds both."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Source(models.TextChoices):
        PROMPTS = "prompts", "prompts you give"
        VOTES = "votes", "the prompts of your blind votes on the two models"
        HELD_OUT = "held_out", "a job's held-out examples"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="judgements")
    model_a = models.CharField(max_length=200)
    model_b = models.CharField(max_length=200)
    judge = models.CharField(max_length=200, help_text="the judge model, a base model's name or an ft: id")
    source = models.CharField(max_length=10, choices=Source.choices)
    max_answer_tokens = models.PositiveIntegerField(default=128)
    rows = models.JSONField(
        default=list,
        help_text="one per prompt: its messages, the voted round if any, both answers and the verdicts of both orders",
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="runs started, and messages lost")
    claim = models.CharField(max_length=32, blank=True, help_text="the token of the run that holds it")
    lease_until = models.DateTimeField(
        null=True, blank=True, help_text="on the database's clock: when its message or its worker counts as lost"
    )
    done = models.PositiveIntegerField(default=0, help_text="prompts judged so far")
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    @property
    def total(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        return f"judgement of {self.model_a} vs {self.model_b} by {self.judge} ({self.status})"
