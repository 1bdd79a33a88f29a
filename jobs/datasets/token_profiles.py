"""Token counts: once per (dataset, tokenizer), stored as JSON and read by every max-length view and estimate.
A small dataset's are counted during its upload with the default model's tokenizer (so the first estimate
knows its lengths); the rest in a background worker."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs.base_models.selectors import base_model_list
from jobs.common import blobs, queue
from jobs.datasets import selectors
from jobs.datasets.models import Dataset, TokenProfile
from worker.config import TrainConfig
from worker.data.report import token_profile
from worker.modeling import TOKENIZER_FILES, cached_tokenizer, tokenizer_fingerprint

log = logging.getLogger(__name__)

TOKEN_PROFILE_LIMIT = 5000  # examples counted for the check page and the estimate
TOKEN_PROFILE_SAMPLES = 50  # examples rendered token by token for the check page's pages of examples
# The check of prompts to reward leaves this much of the max length to the answers unless told otherwise: what a
# new reinforcement job does.
DEFAULT_ANSWER_TOKENS = TrainConfig().max_answer_tokens


def tokens_count_for_default_model(dataset: Dataset, *, now: bool = False) -> None:
    """Count a new dataset's tokens with the first base model's tokenizer (the check page's and the job form's
    default): during this call with `now`, else in a background worker, so they are ready when first looked at."""
    first = base_model_list(owner=dataset.owner).first()
    if first is None:
        return
    try:
        token_profile_request(dataset=dataset, model_path=first.path, now=now)
    except OSError:
        log.warning("could not start counting tokens of %s with %s", dataset.id, first.path)


def token_profile_request(*, dataset: Dataset, model_path: str, now: bool = False) -> TokenProfile:
    """The dataset's token profile under this model's tokenizer; a new one is counted at once (`now`) or queued
    for a worker. For a model in object storage only its tokenizer files come to this (web) machine."""
    key = tokenizer_fingerprint(blobs.model_local_path(model_path, only=TOKENIZER_FILES))
    profile = TokenProfile.objects.filter(dataset=dataset, tokenizer_key=key).first()
    if profile is not None:
        return profile
    try:
        with transaction.atomic():
            profile = TokenProfile.objects.create(
                dataset=dataset, tokenizer_key=key, model_path=model_path, total=min(dataset.rows, TOKEN_PROFILE_LIMIT)
            )
    except IntegrityError:  # another request made it a moment ago
        return TokenProfile.objects.get(dataset=dataset, tokenizer_key=key)
    if now:
        try:
            token_profile_compute(profile_id=profile.id)
            profile.refresh_from_db()
            return profile
        except Exception:  # counting here is a head start, not a requirement: the worker does it otherwise
            log.exception("counting the tokens of %s during the upload failed; queued instead", dataset.id)
    queue.enqueue(queue.TOKEN_PROFILE, profile.id, robust=True)
    return profile


def token_profile_compute(*, profile_id: int) -> str:
    """Count the tokens (the background task's body); writes the profile's JSON file, then marks it ready."""
    from worker.data.normalized import read_normalized_jsonl

    profile = TokenProfile.objects.select_related("dataset").filter(id=profile_id).first()
    if profile is None or profile.status != TokenProfile.Status.PENDING:
        return "skipped"

    def progress(done: int, total: int) -> None:
        TokenProfile.objects.filter(id=profile.id).update(done=done, total=total, updated=timezone.now())

    try:
        examples = read_normalized_jsonl(blobs.fetch(profile.dataset.normalized_file))
        result = token_profile(
            cached_tokenizer(blobs.model_local_path(profile.model_path, only=TOKENIZER_FILES)),
            examples,
            samples=TOKEN_PROFILE_SAMPLES,
            limit=TOKEN_PROFILE_LIMIT,
            progress=progress,
        )
    except (ValueError, OSError) as exc:
        log.warning("token profile %s failed: %s", profile.id, exc)
        message = str(exc) if isinstance(exc, ValueError) else "the dataset or the model's tokenizer could not be read"
        TokenProfile.objects.filter(id=profile.id).update(status=TokenProfile.Status.FAILED, error=message[:500])
        return "failed"
    relative = f"datasets/tokens/{profile.dataset_id}-{profile.tokenizer_key}.json"
    blobs.write_text(relative, json.dumps(result.to_json()))
    TokenProfile.objects.filter(id=profile.id).update(
        status=TokenProfile.Status.READY,
        file=relative,
        stored_bytes=blobs.stored_bytes(relative),
        done=len(result.lengths),
        total=len(result.lengths),
    )
    return "ready"


def token_profiles_resend(*, stale_seconds: float) -> int:
    """Re-queue pending profiles nobody has advanced for `stale_seconds` (a lost message or worker)."""
    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    stale = list(
        TokenProfile.objects.filter(status=TokenProfile.Status.PENDING, updated__lt=cutoff).values_list("id", flat=True)
    )
    for profile_id in stale:
        TokenProfile.objects.filter(id=profile_id).update(updated=timezone.now())
        queue.enqueue(queue.TOKEN_PROFILE, profile_id, robust=True)
    return len(stale)


def dataset_token_report(*, dataset: Dataset, model_path: str, max_length: int, answer_tokens: int = 0):
    """(the TokenReport for this max length, or None while the tokens are being counted; the profile). Prompts
    to reward leave `answer_tokens` of the max length to their answers."""
    profile = token_profile_request(dataset=dataset, model_path=model_path)
    report = selectors.token_report_of(profile=profile, max_length=max_length, answer_tokens=answer_tokens)
    return report, profile
