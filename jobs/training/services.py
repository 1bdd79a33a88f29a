"""Writes for jobs: keyword-only `<entity>_<action>` functions that validate, write in a transaction
and schedule side effects on commit (the train queue, live events, the `job_finished` signal)."""
from __future__ import annotations

import dataclasses

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.accounts.limits import check_limit, storage_used
from jobs.base_models.models import BaseModel
from jobs.common import blobs, queue
from jobs.common.exceptions import StateError
from jobs.common.storage import media_relative
from jobs.training import selectors
from jobs.training.files import job_evaluation, job_files, job_output_dir, merged_zip_name
from jobs.training.merges import merge_queue, merged_export_forget, merged_status
from jobs.training.live import publish_job, publish_status
from jobs.training.models import TERMINAL_STATUSES, Adapter, FineTuneJob, JobEvent, JobStatus, MetricPoint
from jobs.training.routing import Capacity, job_devices
from jobs.training.signals import job_finished
from jobs.training.workers import live_capacities, wake_train_workers
from jobs.datasets.models import Dataset
from jobs.datasets.selectors import dataset_examples
from jobs.datasets.token_profiles import dataset_token_report
from worker.config import ConfigError, TrainConfig, preset_of
from worker.errors import InputError
from worker.reporting import WorkLost
from worker.data.loading import file_sha256
from worker.data.normalized import holds_preference_pairs, write_normalized_jsonl
from worker.data.report import truncation_warnings
from worker.estimate import DataShape, compute_bytes, estimate
from worker.evaluation import summary_markdown
from worker.memory_advice import advice_sentence
from worker.export import build_adapter_zip, model_card
from worker.modeling import check_modules_to_save
from worker.splits import split_examples
from worker.targets import resolve_targets

log = logging.getLogger(__name__)


class JobStateError(StateError):
    """The job is not in a state that allows this action."""


def job_validate_config(*, base_model: BaseModel, config: TrainConfig) -> list[str]:
    """Check the config against the model itself; returns the resolved target modules."""
    targets = resolve_targets(base_model.linear_modules, config.target_preset, config.target_modules)
    if config.devices > settings.TRAIN_MAX_DEVICES:
        raise ConfigError("devices", f"at most {settings.TRAIN_MAX_DEVICES} on this installation "
                                     f"(setting TRAIN_MAX_DEVICES), got {config.devices}")
    if config.modules_to_save:
        check_modules_to_save(base_model.local_path, config.modules_to_save)
    return targets


# The settings that fix an adapter's shape: a job that starts from another job's adapter takes them over.
ADAPTER_SHAPE_FIELDS = ("rank", "alpha", "target_preset", "target_modules", "use_rslora", "use_dora", "bias",
                        "modules_to_save")


def job_start_config(*, owner, base_model: BaseModel, config: TrainConfig) -> TrainConfig:
    """`config` with the adapter settings of the job it starts from (`start_from`, "DPO on top of job X"):
    the owner's succeeded job on the same base model. InputError("start_from", ...) otherwise."""
    if not config.start_from:
        return config
    start = selectors.job_find(owner=owner, job_id=config.start_from)
    if start is None:
        raise InputError("start_from", "no such job")
    if not start.has_adapter:
        raise InputError("start_from", f"job {start.short_id} is {start.status} and has no adapter to start from; "
                                       "pick a succeeded job")
    if start.base_model_id != base_model.id:
        raise InputError("start_from", f"job {start.short_id} trained {start.base_model.name}, not "
                                       f"{base_model.name}; pick a job on the same base model")
    if start.config.get("init_lora_weights") == "pissa":
        raise InputError("start_from", f"job {start.short_id} used PiSSA, whose adapter is converted for the "
                                       "original base; pick a job with the default init")
    shape = {k: start.config[k] for k in ADAPTER_SHAPE_FIELDS if k in start.config}
    return dataclasses.replace(config, start_from=str(start.id), **shape)


def job_check_method(*, dataset: Dataset, config: TrainConfig, field: str = "method") -> None:
    """InputError naming `field` unless the dataset is of the method's kind: preference pairs for DPO / ORPO,
    examples with answers (or texts) for supervised tuning."""
    pairs = bool(dataset.normalized_file) and holds_preference_pairs(blobs.fetch(dataset.normalized_file))
    if config.is_preference and not pairs:
        raise InputError(field, f"{config.method} trains on preference pairs (prompt, chosen, rejected) and the "
                                f"dataset '{dataset.name}' holds plain examples; pick a preference dataset or "
                                "method supervised")
    if pairs and not config.is_preference:
        raise InputError(field, f"the dataset '{dataset.name}' holds preference pairs; train it with method dpo "
                                "or orpo, or pick a dataset of examples for supervised tuning")


def _job_data(job: FineTuneJob, dataset: Dataset, validation: dict) -> dict:
    """Snapshot the training examples (and the validation split) into the job's folder, so the
    same split serves eval loss and evaluation, and deleting the dataset later changes nothing."""
    examples = dataset_examples(dataset=dataset)
    kind = validation.get("kind", "none")
    if kind == "split":
        percent, seed = validation.get("percent", 10), validation.get("seed", 42)
        train, valid = split_examples(examples, percent, seed)
        record = {"kind": "split", "percent": percent, "seed": seed}
    elif kind == "dataset":
        other: Dataset = validation["dataset"]
        if other.owner_id != dataset.owner_id:
            raise InputError("validation_dataset", "unknown dataset")
        job_check_method(dataset=other, config=TrainConfig.from_dict(job.config), field="validation_dataset")
        train, valid = examples, dataset_examples(dataset=other)
        record = {"kind": "dataset", "dataset": str(other.id), "dataset_name": other.name}
    elif kind == "none":
        train, valid, record = examples, [], {"kind": "none"}
    else:
        raise InputError("validation", "must be none, split or dataset")
    with blobs.writing(job_files(job, "data")) as folder:
        folder.mkdir()
        write_normalized_jsonl(train, folder / "train.jsonl")
        if valid:
            write_normalized_jsonl(valid, folder / "eval.jsonl")
    return {**record, "train_rows": len(train), "eval_rows": len(valid)}


def _fleet_limit(fleet: list[tuple[str, Capacity]], devices: int) -> tuple[str, float]:
    """The live worker with the most memory among those with `devices` devices: (name, MB); ("", 0) if none."""
    able = [(capacity.memory_mb, name) for name, capacity in fleet if capacity.max_devices >= devices]
    memory, name = max(able) if able else (0.0, "")
    return name, memory


def job_estimate(*, owner, dataset: Dataset, base_model: BaseModel, config: TrainConfig,
                 fleet: list[tuple[str, Capacity]] | None = None):
    """Pre-flight: exact trainable parameters, adapter size, memory and time, before anything runs. The memory
    it must fit is the biggest live train worker's (`fleet`), or this machine's while none has announced."""
    fleet = live_capacities() if fleet is None else fleet
    report, _ = dataset_token_report(dataset=dataset, model_path=base_model.path, max_length=config.max_seq_length)
    if report is not None:
        lengths = [min(n, config.max_seq_length) for n in report.lengths] or [config.max_seq_length]
    else:  # still being counted in a worker: about 3 characters a token, plus the chat template
        chars_per_row = (dataset.stats or {}).get("chars", 0) / max(1, dataset.rows)
        lengths = [min(config.max_seq_length, int(chars_per_row / 3) + 32)]
    tokens_per_s = selectors.measured_tokens_per_s(owner=owner, base_model=base_model, qlora=config.qlora)
    device = settings.TRAIN_DEVICE
    if fleet:
        limit = _fleet_limit(fleet, job_devices(config.to_dict()))[1]
        if device == "auto":  # the workers' devices, not the web server's (auto precision counts fp32 on CPUs)
            device = "cuda" if all(capacity.device == "cuda" for _, capacity in fleet) else "cpu"
    else:
        limit = settings.TRAIN_MEMORY_LIMIT_MB or (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 2**20
    est = estimate(base_model.local_path, config, n_examples=max(1, dataset.rows), mean_tokens=sum(lengths) / len(lengths),
                   device=device, tokens_per_s=tokens_per_s, memory_limit_mb=limit,
                   flops_per_s=None if tokens_per_s else machine_speed(device=device, config=config),
                   data=_data_shape(report))
    if report is not None:
        warnings = truncation_warnings(report)
    else:
        warnings = [f"The token lengths are still being counted: whether max_seq_length {config.max_seq_length} "
                    "cuts examples is not known yet."]
    seconds = est.seconds
    if seconds is not None and est.seconds_source == "measured":
        # The steps' own speed leaves out loading, tokenizing and the end-of-job evaluation: add what they took.
        seconds += selectors.measured_overhead_seconds(owner=owner, base_model=base_model) or 0.0
    return dataclasses.replace(est, lengths_known=report is not None, warnings=warnings, seconds=seconds)


def _data_shape(report) -> DataShape:
    """The longest sequence and the mean labelled tokens per sequence at this max length, from the token report."""
    if report is None or not report.lengths:
        return DataShape()
    sequences = len(report.lengths) + len(report.rejected_lengths or [])
    return DataShape(longest=max(report.lengths + (report.rejected_lengths or [])),
                     labelled=report.trained_tokens / sequences)


SPEED_CACHE = "speed_calibration.json"  # under VAR_DIR: this machine's measured matmul rates


def machine_speed(*, device: str, config: TrainConfig) -> float | None:
    """This machine's matmul rate in the job's dtype (worker.speed, measured once and cached), when the train
    device is this machine's kind: the web server has no GPU to measure for CUDA workers."""
    from worker.modeling import choose_device
    from worker.speed import matmul_flops

    here = "cpu"
    try:
        here = choose_device("auto").device
    except InputError:
        pass
    if device not in ("auto", here):
        return None
    device = here
    return matmul_flops(device, compute_bytes(config, device), Path(settings.VAR_DIR) / SPEED_CACHE)


def job_check_quotas(*, owner, new_job: bool = True) -> None:
    """QuotaExceeded if the owner may not start (or queue) more training now."""
    if new_job:
        check_limit(owner, "active_jobs", used=selectors.active_job_count(owner=owner))
    check_limit(owner, "compute_seconds_per_day", used=int(selectors.compute_seconds_today(owner=owner)))
    check_limit(owner, "storage_bytes", used=storage_used(owner), adding=0)


def job_check_fits(*, owner, dataset: Dataset, base_model: BaseModel, config: TrainConfig):
    """The estimate, or InputError("config", ...) with the figures and the advice when the job fits no live
    train worker and ROUTING_NO_FIT is refuse (with wait it is accepted and waits for one); while no worker
    has announced, when it cannot fit this machine's memory (TRAIN_MEMORY_LIMIT_MB)."""
    job_check_method(dataset=dataset, config=config)
    fleet = live_capacities()
    est = job_estimate(owner=owner, dataset=dataset, base_model=base_model, config=config, fleet=fleet)
    if est.fits:
        return est
    if not fleet:
        raise InputError("config", f"this job would not fit in memory (about {est.memory_mb:,.0f} MB needed, "
                                   f"{est.memory_limit_mb:,.0f} MB available). " + advice_sentence(est.advice))
    if settings.ROUTING_NO_FIT == "wait":
        return est
    devices = job_devices(config.to_dict())
    name, memory = _fleet_limit(fleet, devices)
    if not name:
        most = max(capacity.max_devices for _, capacity in fleet)
        raise InputError("config", f"this job trains on {devices} devices and no live train worker has that many "
                                   f"(at most {most}); it is refused (ROUTING_NO_FIT=refuse)")
    raise InputError("config", f"this job needs about {est.memory_mb:,.0f} MB of memory per device and the "
                               f"biggest live train worker ({name}) has {memory:,.0f} MB; it is refused "
                               "(ROUTING_NO_FIT=refuse). " + advice_sentence(est.advice))


def job_create(*, owner, dataset: Dataset, base_model: BaseModel, config: TrainConfig, name: str = "",
               validation: dict | None = None, memory_mb: float = 0, default_name: bool = True) -> FineTuneJob:
    """Save a queued job (with its data snapshot) and hand it on commit to the train queue of its memory
    class (`memory_mb`: the pre-flight estimate; 0 when unknown, which any worker takes). A job without a
    name gets `job_default_name` unless `default_name` is off (the OpenAI API, where the name is the suffix)."""
    if dataset.owner_id != owner.id:
        raise InputError("dataset", "unknown dataset")
    job_check_quotas(owner=owner)
    config = job_start_config(owner=owner, base_model=base_model, config=config)
    job_validate_config(base_model=base_model, config=config)
    job_check_method(dataset=dataset, config=config)
    name = name.strip()
    if not name and default_name:
        name = job_default_name(dataset_name=dataset.name, config=config, when=timezone.now())
    with transaction.atomic():
        job = FineTuneJob.objects.create(owner=owner, dataset=dataset, base_model=base_model,
                                         config=config.to_dict(), name=name[:200], dataset_name=dataset.name,
                                         dataset_sha256=dataset.sha256, memory_mb=memory_mb)
        try:
            job.validation = _job_data(job, dataset, validation or {"kind": "none"})
        except BaseException:
            blobs.delete(job_files(job))
            raise
        job.save(update_fields=["validation"])
        wake_train_workers()
        waiting = selectors.job_waiting_for(job=job)
        if waiting:
            job_event(job_id=job.id, kind="waiting", message=f"{waiting}: no live train worker has enough memory "
                                                             "now; it starts when one that fits it is running")
    return job


def job_default_name(*, dataset_name: str, config: TrainConfig, when) -> str:
    """A readable name for a job the user did not name: its dataset, preset (and method) and a short date."""
    kind = preset_of(config) + ("" if config.method == "supervised" else f" {config.method.upper()}")
    return f"{Path(dataset_name).stem or dataset_name} · {kind} · {timezone.localtime(when):%b %-d %H:%M}"


def job_delete(*, job: FineTuneJob, by) -> None:
    """Delete an ended (or paused) job with its files: adapter, checkpoints, exports, data snapshot, chats
    and votes. A job still queued or running is cancelled first; one another live job starts from is kept."""
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    deletable = [*TERMINAL_STATUSES, JobStatus.PAUSED]
    if job.status not in deletable:
        raise JobStateError(f"a {job.status} job cannot be deleted; cancel it first")
    users = (FineTuneJob.objects.filter(owner=by, config__start_from=str(job.id))
             .exclude(status__in=TERMINAL_STATUSES).exclude(id=job.id))
    if users.exists():
        raise JobStateError(f"job {users.first().name or users.first().short_id} starts from this job's adapter; "
                            "delete it (or let it end) first")
    folder = job_files(job)
    with transaction.atomic():
        if not FineTuneJob.objects.filter(id=job.id, status__in=deletable).delete()[0]:
            job.refresh_from_db()
            raise JobStateError(f"a {job.status} job cannot be deleted; cancel it first")
        transaction.on_commit(lambda: blobs.delete(folder))


def _announce_end(job: FineTuneJob) -> None:
    """Tell other domains (webhooks) once the job's end is committed."""
    transaction.on_commit(lambda: job_finished.send(sender=FineTuneJob, job=job))


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
        transaction.on_commit(lambda: publish_status(job))
        if job.status in TERMINAL_STATUSES:
            _announce_end(job)
    else:
        publish_job(job.id, "message", {"kind": request, "message": f"{request} requested"})
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
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    job_check_quotas(owner=by, new_job=False)
    with transaction.atomic():
        if not FineTuneJob.objects.filter(id=job.id, status=JobStatus.PAUSED).update(
                status=JobStatus.QUEUED, stop_requested=""):
            job.refresh_from_db()
            raise JobStateError(f"a {job.status} job cannot be resumed; only a paused one")
        wake_train_workers()
    job.refresh_from_db()
    transaction.on_commit(lambda: publish_status(job))
    return job


def job_retry(*, job: FineTuneJob, by, config: TrainConfig | None = None) -> FineTuneJob:
    """A new job with the same data snapshot and settings (or `config`), for a failed or cancelled one."""
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise JobStateError(f"a {job.status} job cannot be retried; only a failed or cancelled one")
    config = config or TrainConfig.from_dict(job.config)
    job_validate_config(base_model=job.base_model, config=config)
    job_check_quotas(owner=by)
    with transaction.atomic():
        new = FineTuneJob.objects.create(
            owner=job.owner, dataset=job.dataset, base_model=job.base_model, config=config.to_dict(),
            name=(f"{job.name} (retry)" if job.name else "")[:200], dataset_name=job.dataset_name,
            dataset_sha256=job.dataset_sha256, validation=job.validation,
            memory_mb=job.memory_mb)  # the first estimate: at most what lower-memory advice needs
        with blobs.writing(job_files(new, "data")) as folder:
            shutil.copytree(blobs.fetch(job_files(job, "data")), folder)
        wake_train_workers()
    return new


def job_event(*, job_id, kind: str, message: str) -> None:
    """A line in the job's log, shown live on its page."""
    JobEvent.objects.create(job_id=job_id, kind=kind, message=message)
    publish_job(job_id, "message", {"kind": kind, "message": message})


def job_mark(*, job_id, status: str, error: str = "", error_code: str = "", claim: str | None = None,
             **fields: Any) -> FineTuneJob:
    """Record a worker-side status change and announce it (`error_code` says what kind of failure).
    With `claim`, only the run holding that claim may write it (WorkLost otherwise); the claim ends."""
    values = dict(status=status, error=error, error_code=error_code, stop_requested="", lease_until=None, claim="",
                  **fields)
    if status in TERMINAL_STATUSES:
        values["finished"] = timezone.now()
    rows = FineTuneJob.objects.filter(id=job_id)
    if claim is not None:
        rows = rows.filter(claim=claim, status=JobStatus.RUNNING)
    if not rows.update(**values) and claim is not None:
        raise WorkLost(f"job {job_id} is no longer claimed by this worker")
    job = FineTuneJob.objects.get(id=job_id)
    publish_status(job)
    if status in TERMINAL_STATUSES:
        _announce_end(job)
    return job


def adapter_create(*, job: FineTuneJob, result) -> Adapter:
    """Package the trained adapter: zip with tokenizer, config, metrics, dataset hash, model card."""
    out = job_output_dir(job)
    metrics = [{"step": p.step, **{k: v for k, v in p.as_event().items() if v is not None}}
               for p in MetricPoint.objects.filter(job=job).order_by("step")]
    title = job.name or f"LoRA adapter {job.short_id}"
    evaluation = job_evaluation(job)
    card = model_card(title=title, base_model=job.base_model.name, config=job.config,
                      rows=job.validation.get("train_rows", 0), dataset_sha256=job.dataset_sha256,
                      steps=result.steps_done, final_loss=result.final_loss, targets=result.targets,
                      evaluation_md=summary_markdown(evaluation) if evaluation else "",
                      precision=getattr(result, "precision", "") or job.precision)
    extra = {"evaluation.json": (out / "evaluation.json").read_text()} if evaluation else {}
    zip_path = out / f"adapter-{job.short_id}.zip"
    folder, zip_name = media_relative(result.adapter_dir), media_relative(zip_path)
    with blobs.writing(zip_name) as tmp_zip:
        build_adapter_zip(result.adapter_dir, tmp_zip, card=card, config={**job.config, "validation": job.validation},
                          metrics=metrics, dataset_sha256=job.dataset_sha256, extra_files=extra)
    with blobs.writing(folder, in_place=True) as adapter_dir:  # the engine wrote the adapter there
        (adapter_dir / "README.md").write_text(card)
    if evaluation:
        with blobs.writing(job_files(job, "evaluation.json"), in_place=True):
            pass  # written by the engine; leaving the block publishes it
    blobs.delete(job_files(job, "checkpoints"))
    adapter, _ = Adapter.objects.update_or_create(
        job=job, defaults=dict(folder=folder, zip_file=zip_name,
                               size_bytes=zip_path.stat().st_size, sha256=file_sha256(zip_path)))
    return adapter


def adapter_merge_request(*, job: FineTuneJob, by) -> str:
    """Queue a merged-model export (merge_and_unload on the background worker); returns the status.
    Its MergedExport row counts the attempts; the memory check happens on the worker, before loading."""
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    if not job.has_adapter:
        raise JobStateError("only a succeeded job has an adapter to merge")
    with transaction.atomic():
        if not merge_queue(job):
            return merged_status(job)
        queue.enqueue(queue.MERGE_ADAPTER, str(job.id))
    return "pending"


def merged_export_delete(*, job: FineTuneJob, by) -> bool:
    """Delete the job's merged model (zip, folder and row) to free storage; False if there was none."""
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    if merged_status(job) == "pending":
        raise JobStateError("the merged model is still being made; delete it once it is ready")
    existed = merged_export_forget(job)
    blobs.delete(merged_zip_name(job))
    shutil.rmtree(job_output_dir(job) / "merged", ignore_errors=True)
    if existed:
        job_event(job_id=job.id, kind="export", message="merged model deleted")
    return existed
