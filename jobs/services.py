"""Writes: keyword-only `<entity>_<action>` functions that validate, write in a transaction and
schedule side effects on commit."""
from __future__ import annotations

import logging
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs import events, selectors
from jobs.models import (Adapter, BaseModel, ChatAnswer, ChatRound, ChatSession, Dataset, FineTuneJob, JobStatus,
                         MetricPoint, TERMINAL_STATUSES, Vote)
from worker.config import ConfigError, GenerationConfig, TrainConfig
from worker.data import DatasetError, Problem, file_sha256
from worker.targets import resolve_targets

log = logging.getLogger(__name__)

DEMO_DATASET = Path(settings.BASE_DIR) / "worker" / "demo_data" / "demo_dataset.jsonl"
DEMO_DATASET_NAME = "Demo: contact details to JSON"


class JobStateError(Exception):
    """The job is not in a state that allows this action."""


def media_path(relative: str) -> Path:
    return Path(settings.MEDIA_ROOT) / relative


# --- datasets ------------------------------------------------------------------------------

EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
PENDING_DIR = "datasets/pending"


class MappingNeeded(Exception):
    """The file is readable but its columns match no known schema: ask the user to map them."""

    def __init__(self, *, token: str, filename: str, columns: list[str], message: str):
        super().__init__(message)
        self.token, self.filename, self.columns = token, filename, columns


class DatasetInUse(Exception):
    """A queued, running or paused job still reads this dataset."""


def _extension(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix not in EXTENSIONS:
        raise DatasetError(filename, [Problem(0, "", "must be a .jsonl, .json, .csv or .parquet file")])
    return suffix


def _store_upload(upload, dest: Path, limit: int, filename: str) -> int:
    """Stream the upload to dest, refusing it past `limit` bytes."""
    size = 0
    with open(dest, "wb") as out:
        for chunk in upload.chunks():
            size += len(chunk)
            if size > limit:
                raise DatasetError(filename, [Problem(0, "", f"is larger than the limit of {limit // (1024 * 1024)} MB")])
            out.write(chunk)
    return size


def dataset_validate(*, path: Path, filename: str, mapping: dict | None = None, drop_duplicates: bool = False):
    """Read and check a file with the engine's loader; raises DatasetError / SchemaUnknown / ConfigError."""
    from worker.data import ColumnMapping, load_dataset_file

    column_mapping = ColumnMapping.from_dict(mapping) if mapping else None
    return load_dataset_file(path, filename, mapping=column_mapping, drop_duplicates=drop_duplicates)


def _dataset_from_file(*, owner, tmp: Path, filename: str, name: str, size: int, mapping: dict | None,
                       drop_duplicates: bool) -> Dataset:
    from worker.data import write_normalized_jsonl

    loaded = dataset_validate(path=tmp, filename=filename, mapping=mapping, drop_duplicates=drop_duplicates)
    file_id = uuid.uuid4().hex
    final = media_path(f"datasets/{file_id}{Path(tmp).suffix}")
    normalized = media_path(f"datasets/{file_id}.normalized.jsonl")
    try:
        write_normalized_jsonl(loaded.examples, normalized)
        tmp.replace(final)
        with transaction.atomic():
            return Dataset.objects.create(
                owner=owner, name=(name or filename)[:200], original_name=filename[:255],
                file=str(final.relative_to(settings.MEDIA_ROOT)),
                normalized_file=str(normalized.relative_to(settings.MEDIA_ROOT)),
                format=loaded.format, schema=loaded.schema, mapping=mapping or {}, rows=loaded.rows,
                size_bytes=size, sha256=loaded.sha256,
                stats={"turns": loaded.turns, "chars": loaded.chars, "columns": loaded.columns,
                       "duplicates": loaded.duplicates[:100], "duplicate_count": len(loaded.duplicates),
                       "dropped_duplicates": loaded.dropped_duplicates},
            )
    except BaseException:
        final.unlink(missing_ok=True)
        normalized.unlink(missing_ok=True)
        raise


def dataset_create(*, owner, upload, name: str = "", mapping: dict | None = None,
                   drop_duplicates: bool = False) -> Dataset:
    """Store an uploaded dataset under an opaque id after validating every row.

    Raises DatasetError (problems with line and field; nothing is stored), or MappingNeeded when
    no schema matches: the file then waits, under an opaque token, for `dataset_create_mapped`.
    """
    from worker.data import SchemaUnknown

    filename = Path(getattr(upload, "name", "") or "upload.jsonl").name
    suffix = _extension(filename)
    folder = media_path("datasets")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{uuid.uuid4().hex}{suffix}"
    try:
        size = _store_upload(upload, tmp, settings.DATASET_MAX_BYTES, filename)
        try:
            return _dataset_from_file(owner=owner, tmp=tmp, filename=filename, name=name, size=size,
                                      mapping=mapping, drop_duplicates=drop_duplicates)
        except SchemaUnknown as exc:
            if mapping:
                raise
            token = uuid.uuid4().hex
            pending = media_path(PENDING_DIR)
            pending.mkdir(parents=True, exist_ok=True)
            tmp.replace(pending / f"{owner.id}-{token}{suffix}")
            raise MappingNeeded(token=token, filename=filename, columns=list(exc.columns), message=str(exc)) from None
    finally:
        tmp.unlink(missing_ok=True)


def _pending_file(owner, token: str) -> Path:
    if not token.isalnum():
        raise ConfigError("token", "unknown upload; upload the file again")
    matches = list(media_path(PENDING_DIR).glob(f"{owner.id}-{token}.*"))
    if not matches:
        raise ConfigError("token", "unknown or expired upload; upload the file again")
    return matches[0]


def dataset_create_mapped(*, owner, token: str, filename: str, mapping: dict, name: str = "",
                          drop_duplicates: bool = False) -> Dataset:
    """Finish an upload that needed a column mapping (see MappingNeeded)."""
    pending = _pending_file(owner, token)
    size = pending.stat().st_size
    tmp = pending.with_name(f".{uuid.uuid4().hex}{pending.suffix}")
    pending.replace(tmp)
    try:
        return _dataset_from_file(owner=owner, tmp=tmp, filename=Path(filename).name or pending.name, name=name,
                                  size=size, mapping=mapping, drop_duplicates=drop_duplicates)
    except BaseException:
        if tmp.exists():
            tmp.replace(pending)  # keep it for another try with a better mapping
        raise


def dataset_create_demo(*, owner) -> Dataset:
    """The shipped demo dataset, for the user's one-click start (reused if already added)."""
    existing = Dataset.objects.filter(owner=owner, name=DEMO_DATASET_NAME).first()
    if existing:
        return existing
    with open(DEMO_DATASET, "rb") as fh:
        from django.core.files import File

        return dataset_create(owner=owner, upload=File(fh, name=DEMO_DATASET.name), name=DEMO_DATASET_NAME)


def dataset_rename(*, dataset: Dataset, name: str) -> Dataset:
    name = name.strip()
    if not name:
        raise ConfigError("name", "must not be empty")
    if len(name) > 200:
        raise ConfigError("name", "must be at most 200 characters")
    dataset.name = name
    dataset.save(update_fields=["name"])
    return dataset


def dataset_delete(*, dataset: Dataset) -> None:
    """Delete the row and its files; refused while an unfinished job uses the dataset."""
    active = list(dataset.jobs.exclude(status__in=TERMINAL_STATUSES).values_list("name", "id"))
    if active:
        names = ", ".join(name or str(job_id)[:8] for name, job_id in active)
        raise DatasetInUse(f"{dataset.name} is used by unfinished job(s): {names}. Cancel them or wait until they end.")
    files = [media_path(dataset.file)] + ([media_path(dataset.normalized_file)] if dataset.normalized_file else [])
    with transaction.atomic():
        dataset.delete()
        transaction.on_commit(lambda: [f.unlink(missing_ok=True) for f in files])


# --- base models ---------------------------------------------------------------------------

def base_model_register(*, name: str, path: str | Path) -> BaseModel:
    """Describe a local model folder (on the meta device) and record it; idempotent by name."""
    from worker.modeling import describe_model

    info = describe_model(str(path))
    model, _ = BaseModel.objects.update_or_create(
        name=name,
        defaults=dict(path=str(path), architecture=info["architecture"], parameters=info["parameters"],
                      linear_modules=info["linear_modules"], has_chat_template=info["has_chat_template"]),
    )
    return model


# --- jobs ----------------------------------------------------------------------------------

def job_validate_config(*, base_model: BaseModel, config: TrainConfig) -> list[str]:
    """Check the config against the model itself; returns the resolved target modules."""
    targets = resolve_targets(base_model.linear_modules, config.target_preset, config.target_modules)
    if config.modules_to_save:
        from worker.modeling import check_modules_to_save

        check_modules_to_save(base_model.path, config.modules_to_save)
    return targets


def _job_data(job: FineTuneJob, dataset: Dataset, validation: dict) -> dict:
    """Snapshot the training examples (and the validation split) into the job's folder, so the
    same split serves eval loss and evaluation, and deleting the dataset later changes nothing."""
    from worker.data import read_normalized_jsonl, write_normalized_jsonl
    from worker.splits import split_examples

    examples = read_normalized_jsonl(media_path(dataset.normalized_file))
    kind = validation.get("kind", "none")
    if kind == "split":
        percent, seed = validation.get("percent", 10), validation.get("seed", 42)
        train, valid = split_examples(examples, percent, seed)
        record = {"kind": "split", "percent": percent, "seed": seed}
    elif kind == "dataset":
        other: Dataset = validation["dataset"]
        if other.owner_id != dataset.owner_id:
            raise ConfigError("validation_dataset", "unknown dataset")
        train, valid = examples, read_normalized_jsonl(media_path(other.normalized_file))
        record = {"kind": "dataset", "dataset": str(other.id), "dataset_name": other.name}
    elif kind == "none":
        train, valid, record = examples, [], {"kind": "none"}
    else:
        raise ConfigError("validation", "must be none, split or dataset")
    folder = job_output_dir(job) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    write_normalized_jsonl(train, folder / "train.jsonl")
    if valid:
        write_normalized_jsonl(valid, folder / "eval.jsonl")
    return {**record, "train_rows": len(train), "eval_rows": len(valid)}


def job_estimate(*, owner, dataset: Dataset, base_model: BaseModel, config: TrainConfig):
    """Pre-flight: exact trainable parameters, adapter size, memory and time, before anything runs."""
    import os

    from jobs.models import MetricPoint
    from jobs.selectors import dataset_token_report
    from worker.estimate import estimate

    report = dataset_token_report(dataset=dataset, base_model=base_model, max_length=config.max_seq_length)
    lengths = [min(n, config.max_seq_length) for n in report.lengths] or [config.max_seq_length]
    measured = list(MetricPoint.objects.filter(
        job__owner=owner, job__base_model=base_model, job__status=JobStatus.SUCCEEDED,
        job__config__qlora=config.qlora, tokens_per_s__isnull=False).order_by("-id").values_list("tokens_per_s", flat=True)[:50])
    tokens_per_s = sorted(measured)[len(measured) // 2] if measured else None
    limit = settings.TRAIN_MEMORY_LIMIT_MB or (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 2**20
    return estimate(base_model.path, config, n_examples=max(1, dataset.rows), mean_tokens=sum(lengths) / len(lengths),
                    device=settings.TRAIN_DEVICE, tokens_per_s=tokens_per_s, memory_limit_mb=limit)


def job_create(*, owner, dataset: Dataset, base_model: BaseModel, config: TrainConfig, name: str = "",
               validation: dict | None = None) -> FineTuneJob:
    """Save a queued job (with its data snapshot) and hand it to the train queue on commit."""
    from jobs.tasks import job_run

    if dataset.owner_id != owner.id:
        raise ConfigError("dataset", "unknown dataset")
    job_validate_config(base_model=base_model, config=config)
    with transaction.atomic():
        job = FineTuneJob.objects.create(owner=owner, dataset=dataset, base_model=base_model,
                                         config=config.to_dict(), name=name[:200], dataset_name=dataset.name,
                                         dataset_sha256=dataset.sha256)
        try:
            job.validation = _job_data(job, dataset, validation or {"kind": "none"})
        except BaseException:
            shutil.rmtree(job_output_dir(job), ignore_errors=True)
            raise
        job.save(update_fields=["validation"])
        transaction.on_commit(lambda: job_run.delay(str(job.id)))
    return job


def job_output_dir(job: FineTuneJob) -> Path:
    return media_path(f"jobs/{job.id}")


def job_evaluation(job: FineTuneJob) -> dict | None:
    """The end-of-job base-vs-adapted evaluation, if the job had a validation split."""
    import json

    path = job_output_dir(job) / "evaluation.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _publish_status(job: FineTuneJob) -> None:
    events.publish(events.job_channel(job.id), "status",
                   {"status": job.status, "error": job.error, "step": job.step, "total_steps": job.total_steps})


def _stop(*, job: FineTuneJob, by, request: str, at_once_from: list[str], at_once_to: str, verb: str,
          **at_once_fields) -> FineTuneJob:
    """A job not yet on a worker changes status at once; a running one gets the cooperative flag,
    which the engine reads before its next step."""
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    with transaction.atomic():
        if not FineTuneJob.objects.filter(id=job.id, status__in=at_once_from).update(
                status=at_once_to, stop_requested=request, **at_once_fields):
            if not FineTuneJob.objects.filter(id=job.id, status=JobStatus.RUNNING).update(stop_requested=request):
                job.refresh_from_db()
                raise JobStateError(f"a {job.status} job cannot be {verb}")
    job.refresh_from_db()
    if job.status == at_once_to:
        transaction.on_commit(lambda: _publish_status(job))
        if job.status in TERMINAL_STATUSES:
            from jobs.services_webhooks import webhook_event_for_job

            webhook_event_for_job(job)
    else:
        events.publish(events.job_channel(job.id), "message", {"kind": request, "message": f"{request} requested"})
    return job


def job_cancel(*, job: FineTuneJob, by) -> FineTuneJob:
    """Cancel: a queued or paused job at once, a running one before its next step."""
    return _stop(job=job, by=by, request="cancel", at_once_from=[JobStatus.QUEUED, JobStatus.PAUSED],
                 at_once_to=JobStatus.CANCELLED, verb="cancelled", finished=timezone.now())


def job_pause(*, job: FineTuneJob, by) -> FineTuneJob:
    """Pause: a queued job at once; a running one saves a checkpoint before its next step and frees the worker."""
    return _stop(job=job, by=by, request="pause", at_once_from=[JobStatus.QUEUED], at_once_to=JobStatus.PAUSED,
                 verb="paused")


def job_resume(*, job: FineTuneJob, by) -> FineTuneJob:
    """Queue a paused job again; the engine continues from its newest checkpoint."""
    from jobs.tasks import job_run

    if job.owner_id != by.id:
        raise JobStateError("not your job")
    with transaction.atomic():
        if not FineTuneJob.objects.filter(id=job.id, status=JobStatus.PAUSED).update(
                status=JobStatus.QUEUED, stop_requested=""):
            job.refresh_from_db()
            raise JobStateError(f"a {job.status} job cannot be resumed; only a paused one")
        transaction.on_commit(lambda: job_run.delay(str(job.id)))
    job.refresh_from_db()
    transaction.on_commit(lambda: _publish_status(job))
    return job


def job_retry(*, job: FineTuneJob, by, config: TrainConfig | None = None) -> FineTuneJob:
    """A new job with the same data snapshot and settings (or `config`), for a failed or cancelled one."""
    from jobs.tasks import job_run

    if job.owner_id != by.id:
        raise JobStateError("not your job")
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise JobStateError(f"a {job.status} job cannot be retried; only a failed or cancelled one")
    config = config or TrainConfig.from_dict(job.config)
    job_validate_config(base_model=job.base_model, config=config)
    with transaction.atomic():
        new = FineTuneJob.objects.create(
            owner=job.owner, dataset=job.dataset, base_model=job.base_model, config=config.to_dict(),
            name=(f"{job.name} (retry)" if job.name else "")[:200], dataset_name=job.dataset_name,
            dataset_sha256=job.dataset_sha256, validation=job.validation)
        shutil.copytree(job_output_dir(job) / "data", job_output_dir(new) / "data")
        transaction.on_commit(lambda: job_run.delay(str(new.id)))
    return new


def job_event(*, job: FineTuneJob, kind: str, message: str) -> None:
    """A line in the job's log, shown live on its page."""
    from jobs.models import JobEvent

    JobEvent.objects.create(job=job, kind=kind, message=message)
    events.publish(events.job_channel(job.id), "message", {"kind": kind, "message": message})


def job_mark(*, job_id, status: str, error: str = "", **fields: Any) -> FineTuneJob:
    """Record a worker-side status change and announce it."""
    values = dict(status=status, error=error, stop_requested="", lease_until=None, **fields)
    if status in TERMINAL_STATUSES:
        values["finished"] = timezone.now()
    FineTuneJob.objects.filter(id=job_id).update(**values)
    job = FineTuneJob.objects.get(id=job_id)
    _publish_status(job)
    if status in TERMINAL_STATUSES:
        from jobs.services_webhooks import webhook_event_for_job

        webhook_event_for_job(job)
    return job


def adapter_create(*, job: FineTuneJob, result) -> Adapter:
    """Package the trained adapter: zip with tokenizer, config, metrics, dataset hash, model card."""
    from worker.export import build_adapter_zip, model_card

    out = job_output_dir(job)
    metrics = [{"step": p.step, **{k: v for k, v in p.as_event().items() if v is not None}}
               for p in MetricPoint.objects.filter(job=job).order_by("step")]
    from worker.evaluation import summary_markdown

    title = job.name or f"LoRA adapter {job.short_id}"
    evaluation = job_evaluation(job)
    card = model_card(title=title, base_model=job.base_model.name, config=job.config,
                      rows=job.validation.get("train_rows", 0), dataset_sha256=job.dataset_sha256,
                      steps=result.steps_done, final_loss=result.final_loss, targets=result.targets,
                      evaluation_md=summary_markdown(evaluation) if evaluation else "")
    extra = {"evaluation.json": (out / "evaluation.json").read_text()} if evaluation else {}
    zip_path = out / f"adapter-{job.short_id}.zip"
    build_adapter_zip(result.adapter_dir, zip_path, card=card, config={**job.config, "validation": job.validation},
                      metrics=metrics, dataset_sha256=job.dataset_sha256, extra_files=extra)
    (Path(result.adapter_dir) / "README.md").write_text(card)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    root = Path(settings.MEDIA_ROOT)
    adapter, _ = Adapter.objects.update_or_create(
        job=job, defaults=dict(folder=str(Path(result.adapter_dir).relative_to(root)),
                               zip_file=str(zip_path.relative_to(root)), size_bytes=zip_path.stat().st_size,
                               sha256=file_sha256(zip_path)))
    return adapter


def merged_zip_path(job: FineTuneJob) -> Path:
    return job_output_dir(job) / f"merged-{job.short_id}.zip"


def merged_status(job: FineTuneJob) -> str:
    """none, pending or ready."""
    if merged_zip_path(job).is_file():
        return "ready"
    return "pending" if (job_output_dir(job) / "merge.pending").exists() else "none"


def adapter_merge_request(*, job: FineTuneJob, by) -> str:
    """Queue a merged-model export (merge_and_unload on the infer worker); returns the status."""
    from jobs.tasks import adapter_merge

    if job.owner_id != by.id:
        raise JobStateError("not your job")
    if job.status != JobStatus.SUCCEEDED or not hasattr(job, "adapter"):
        raise JobStateError("only a succeeded job has an adapter to merge")
    current = merged_status(job)
    if current != "none":
        return current
    (job_output_dir(job) / "merge.pending").touch()
    transaction.on_commit(lambda: adapter_merge.delay(str(job.id)))
    return "pending"


# --- chat ----------------------------------------------------------------------------------

BASE_CONTESTANT = "base"
MAX_CONTESTANTS = 3
VOTE_CHOICES = ("left", "right", "tie", "both_bad")


class ChatStateError(Exception):
    """The chat round is not in a state that allows this (already voted, answers unfinished)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _chat_contestants(*, owner, job: FineTuneJob, keys: list[str] | None) -> list[FineTuneJob | None]:
    """The models named by `keys` ("base" for the base alone, else a job id), all on `job`'s base;
    None stands for the base. Default: the base and `job`."""
    if keys is None:
        return [None, job]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ConfigError("contestants", "must be a list of model keys: \"base\" or a job id")
    if not 2 <= len(keys) <= MAX_CONTESTANTS:
        raise ConfigError("contestants", f"pick 2 or {MAX_CONTESTANTS} models, got {len(keys)}")
    if len(set(keys)) != len(keys):
        raise ConfigError("contestants", "each model may appear only once")
    models: list[FineTuneJob | None] = []
    for key in keys:
        if key == BASE_CONTESTANT:
            models.append(None)
            continue
        try:
            other = FineTuneJob.objects.select_related("base_model").get(owner=owner, id=uuid.UUID(key))
        except (ValueError, FineTuneJob.DoesNotExist):
            raise ConfigError("contestants", f"unknown model {key!r}: use \"base\" or the id of one of your jobs") from None
        if other.status != JobStatus.SUCCEEDED or not hasattr(other, "adapter"):
            raise ConfigError("contestants", f"job {other} has no adapter ({other.status}); pick a succeeded job")
        if other.base_model_id != job.base_model_id:
            raise ConfigError("contestants", f"job {other} is trained on {other.base_model.name}, not on "
                                             f"{job.base_model.name}: side by side models share one base model")
        models.append(other)
    return models


_random = random.SystemRandom()


def _blind_order(models: list) -> list:
    """The screen order of a blind round: a uniformly random permutation, never seen by the client."""
    order = list(models)
    _random.shuffle(order)
    return order


def chat_ask(*, owner, job: FineTuneJob, prompt: str, generation: GenerationConfig,
             session: ChatSession | None = None, contestants: list[str] | None = None,
             blind: bool = False) -> tuple[ChatSession, list[ChatAnswer]]:
    """Send one prompt at once to two or three models on the job's base, one ChatRound: "base" (the
    base alone) and/or the owner's succeeded jobs by id; default the base and this job. A blind round
    (two models) shuffles the screen order server-side and carries no history. Answers (in screen
    order) stream via the infer queue."""
    from jobs import tasks

    if job.owner_id != owner.id:
        raise JobStateError("not your job")
    if job.status != JobStatus.SUCCEEDED or not hasattr(job, "adapter"):
        raise JobStateError("the job has no adapter yet; compare once it has succeeded")
    models = _chat_contestants(owner=owner, job=job, keys=contestants)
    if blind and len(models) != 2:
        raise ConfigError("blind", f"a blind round compares exactly two models, got {len(models)}")
    prompt = prompt.strip()
    if not prompt:
        raise ConfigError("prompt", "type a message first")
    order = _blind_order(models) if blind else models
    with transaction.atomic():
        if session is None:
            session = ChatSession.objects.create(owner=owner, job=job)
        chat_round = ChatRound.objects.create(session=session, blind=blind)
        answers = [ChatAnswer.objects.create(session=session, round=chat_round, job=model, position=position,
                                             side=ChatAnswer.Side.BASE if model is None else ChatAnswer.Side.ADAPTER,
                                             prompt=prompt, settings=generation.__dict__)
                   for position, model in enumerate(order)]
        # One task for the round: the infer worker answers every column in one batched generate.
        ids = [str(a.id) for a in answers]
        transaction.on_commit(lambda: tasks.chat_round.delay(ids))
    return session, answers


def _identity_order(answer: ChatAnswer) -> tuple[int, str]:
    """Canonical order of a vote's two models: the base alone first, then adapters by job id."""
    return (0, "") if answer.job_id is None else (1, str(answer.job_id))


def chat_vote(*, owner, chat_round: ChatRound, choice: str) -> Vote:
    """Record the owner's verdict (left, right, tie or both_bad) on a finished two-model round, once.
    Left and right are read through the round's screen order and stored as the models they showed."""
    if chat_round.session.owner_id != owner.id:
        raise ChatStateError("round", "not your chat")
    if choice not in VOTE_CHOICES:
        raise ConfigError("choice", f"must be one of {', '.join(VOTE_CHOICES)}")
    with transaction.atomic():
        locked = ChatRound.objects.select_for_update().select_related("session__job", "session__base_model").get(
            id=chat_round.id)
        answers = list(locked.answers.order_by("position"))
        if len(answers) != 2:
            raise ConfigError("round", f"a vote compares exactly two answers; this round has {len(answers)}")
        if Vote.objects.filter(round=locked).exists():
            raise ChatStateError("round", "this round already has a vote")
        if any(a.state != ChatAnswer.State.DONE for a in answers):
            raise ChatStateError("round", "wait until both answers have finished")
        left, right = answers
        first, second = sorted(answers, key=_identity_order)
        if choice in ("tie", "both_bad"):
            result = choice
        else:
            result = Vote.Result.FIRST if {"left": left, "right": right}[choice] is first else Vote.Result.SECOND
        session = locked.session
        try:
            with transaction.atomic():
                return Vote.objects.create(
                    owner=owner, round=locked, first_job_id=first.job_id, second_job_id=second.job_id,
                    base_model_id=session.job.base_model_id if session.job_id else session.base_model_id,
                    result=result, blind=locked.blind)
        except IntegrityError:  # a concurrent vote won the race for this round
            raise ChatStateError("round", "this round already has a vote") from None


def chat_stop(*, owner, session: ChatSession) -> int:
    """The stop button: answers still streaming end at their next token, queued ones never start.

    Returns how many answers were still unfinished. Their text so far is kept.
    """
    if session.owner_id != owner.id:
        raise JobStateError("not your chat")
    events.chat_stop_request(session.id)
    unfinished = list(session.answers.filter(state__in=(ChatAnswer.State.PENDING, ChatAnswer.State.STREAMING)))
    for answer in unfinished:
        # A queued answer is finished here, empty; its task finds it no longer pending and skips it.
        if ChatAnswer.objects.filter(id=answer.id, state=ChatAnswer.State.PENDING).update(
                state=ChatAnswer.State.DONE, stopped=True):
            events.publish(events.chat_channel(session.id), "done",
                           {**selectors.answer_event_meta(answer), "text": "", "stopped": True})
    return len(unfinished)
