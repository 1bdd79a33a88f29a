"""One plan per job. `job_plan` runs every check a new job must pass, once and in one place (the config
against the model, the method against the data, the validation set, the memory fit, the quotas), and
returns what the job will be: the resolved config and targets, the validation, the estimate. The form,
REST, the OpenAI API and retry then call `services.job_create(plan=...)`; the estimate endpoints are
`job_plan(..., refuse=False)`. Every rule raises InputError naming the same field for every caller.

Per request the plan reads no weights and no whole dataset: the model's shape is built once per folder
(worker.estimate), the method is read from a dataset's first line, lengths come from the stored token
profile and row counts from the dataset's row."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from jobs.accounts.limits import check_limit, reported_usage
from jobs.base_models.models import BaseModel, ModelStatus
from jobs.common import blobs
from jobs.datasets.models import Dataset
from jobs.datasets.token_profiles import dataset_token_report
from jobs.training import selectors
from jobs.training.files import job_files
from jobs.training.graders import job_grader, judge_paths
from jobs.training.models import FineTuneJob
from jobs.training.routing import Capacity, job_devices, waiting_for
from jobs.training.workers import live_capacities
from worker.config import ConfigError, TrainConfig
from worker.data.normalized import normalized_kind
from worker.data.report import truncation_warnings
from worker.errors import InputError
from worker.estimate import DataShape, Estimate, compute_bytes, estimate
from worker.memory_advice import advice_sentence
from worker.modeling import check_modules_to_save
from worker.targets import resolve_targets

VALIDATION_KINDS = ("none", "split", "dataset")
# The settings that fix an adapter's shape: a job that starts from another job's adapter takes them over.
ADAPTER_SHAPE_FIELDS = (
    "rank",
    "alpha",
    "target_preset",
    "target_modules",
    "use_rslora",
    "use_dora",
    "bias",
    "modules_to_save",
)
SPEED_CACHE = "speed_calibration.json"  # under VAR_DIR: this machine's measured matmul rates


@dataclass(frozen=True)
class JobPlan:
    """What a job will be, every check passed: `job_create(plan=...)` writes exactly this."""

    owner: Any
    dataset: Dataset | None  # None only for a retry whose dataset was deleted since (its snapshot serves)
    base_model: BaseModel
    config: TrainConfig  # resolved: a `start_from` job's adapter shape taken over
    targets: tuple[str, ...]  # the modules LoRA adapts
    validation: dict  # as the job's row keeps it; job_create adds the row counts it writes
    validation_dataset: Dataset | None
    estimate: Estimate
    warnings: tuple[str, ...]  # e.g. how many examples max_seq_length cuts
    refusal: str = ""  # why the job would be refused now (it fits no live worker); "" when it is not
    waiting_for: str = ""  # accepted, but what it waits for ("waiting for a worker with >= 20 GB")
    snapshot_of: FineTuneJob | None = None  # a retry: the job whose data snapshot the new job copies
    grader: dict | None = None  # reinforcement: the checked grader (OpenAI's shape)

    @property
    def memory_mb(self) -> float:
        """The memory the job needs per device: a train worker claims it only when it has this much."""
        return self.estimate.memory_mb

    @property
    def dataset_name(self) -> str:
        if self.snapshot_of is not None:
            return self.snapshot_of.dataset_name
        assert self.dataset is not None, "a plan without a dataset copies a snapshot"
        return self.dataset.name

    @property
    def dataset_sha256(self) -> str:
        if self.snapshot_of is not None:
            return self.snapshot_of.dataset_sha256
        assert self.dataset is not None, "a plan without a dataset copies a snapshot"
        return self.dataset.sha256


class JobRefused(InputError):
    """A valid job refused now: it fits no live train worker (nor this machine while none has announced).
    `plan` is what it would have been, so a form can still show its estimate and advice."""

    def __init__(self, message: str, plan: JobPlan):
        super().__init__("config", message)
        self.plan = plan


def job_plan(
    *,
    owner,
    dataset: Dataset | None,
    base_model: BaseModel,
    config: TrainConfig,
    validation: str | None = None,
    validation_percent: Any = 10.0,
    validation_seed: Any = 42,
    validation_dataset: Dataset | None = None,
    snapshot_of: FineTuneJob | None = None,
    refuse: bool = True,
    fleet: list[tuple[str, Capacity]] | None = None,
    grader: object = None,
) -> JobPlan:
    """Every check of a new job, once: InputError naming the field for anything wrong. With `refuse`, also
    JobRefused when it fits nowhere now and QuotaExceeded past a limit; without (the estimate), `refusal` says
    why it would be refused. `validation` is none, split or dataset (default: dataset when
    `validation_dataset` is given, else none); `snapshot_of` plans a retry of that job on its data snapshot.
    `fleet`: the live train workers (read from Redis when None)."""
    _check_owner(owner, dataset if snapshot_of is None else None, base_model)
    config = job_start_config(owner=owner, base_model=base_model, config=config)
    targets = _check_config(base_model, config)
    if snapshot_of is None:
        if dataset is None:
            raise InputError("dataset", "pick the dataset to train on")
        job_check_method(dataset=dataset, config=config)
        record = _validation_record(
            owner=owner,
            dataset=dataset,
            config=config,
            kind=validation,
            percent=validation_percent,
            seed=validation_seed,
            other=validation_dataset,
        )
        validation_dataset = validation_dataset if record["kind"] == "dataset" else None
    else:
        _check_snapshot_method(snapshot_of, config)
        kept = snapshot_of.validation or {"kind": "none"}
        record = {k: v for k, v in kept.items() if k not in ("train_rows", "eval_rows")}
        validation_dataset = None
    checked_grader = None
    if config.is_reinforcement:
        given = grader if grader is not None or snapshot_of is None else snapshot_of.grader
        checked_grader = job_grader(owner=owner, grader=given, load_python=refuse)
    elif grader is not None:
        raise InputError("grader", "only the reinforcement method uses a grader; leave it out or pick reinforcement")
    fleet = live_capacities() if fleet is None else fleet
    rows = (snapshot_of.validation or {}).get("train_rows", 0) if snapshot_of is not None else 0
    inputs = {"owner": owner, "dataset": dataset, "base_model": base_model, "config": config, "fleet": fleet}
    est = job_estimate(**inputs, rows=rows, grader=checked_grader)
    devices = job_devices(config.to_dict())
    plan = JobPlan(
        owner=owner,
        dataset=dataset,
        base_model=base_model,
        config=config,
        targets=tuple(targets),
        validation=record,
        validation_dataset=validation_dataset,
        estimate=est,
        warnings=tuple(est.warnings),
        refusal=_fit_refusal(est, devices, fleet),
        waiting_for=waiting_for(need_mb=est.memory_mb, devices=devices, capacities=[capacity for _, capacity in fleet]),
        snapshot_of=snapshot_of,
        grader=checked_grader,
    )
    if refuse:
        if plan.refusal:
            raise JobRefused(plan.refusal, plan)
        job_check_quotas(owner=owner)
    return plan


def _check_owner(owner, dataset: Dataset | None, base_model: BaseModel) -> None:
    """The dataset is the owner's and the base model one they may use, ready (the callers look them up so)."""
    if dataset is not None and dataset.owner_id != owner.id:
        raise InputError("dataset", "no such dataset")
    if base_model.owner_id not in (None, owner.id):
        raise InputError("base_model", "no such base model")
    if base_model.status != ModelStatus.READY:
        raise InputError("base_model", f"{base_model.name} is {base_model.status}, not ready to train on")


def _check_config(base_model: BaseModel, config: TrainConfig) -> list[str]:
    """Check the config against the model and this installation; returns the resolved target modules."""
    targets = resolve_targets(base_model.linear_modules, config.target_preset, config.target_modules)
    if config.devices > settings.TRAIN_MAX_DEVICES:
        raise ConfigError(
            "devices",
            f"at most {settings.TRAIN_MAX_DEVICES} on this installation "
            f"(setting TRAIN_MAX_DEVICES), got {config.devices}",
        )
    if config.modules_to_save:
        check_modules_to_save(base_model.local_path, config.modules_to_save)  # cached per model folder
    return targets


def job_start_config(*, owner, base_model: BaseModel, config: TrainConfig) -> TrainConfig:
    """`config` with the adapter settings of the job it starts from (`start_from`, "DPO on top of job X"):
    the owner's succeeded job on the same base model. InputError("start_from", ...) otherwise."""
    if not config.start_from:
        return config
    start = selectors.job_find(owner=owner, job_id=config.start_from)
    if start is None:
        raise InputError("start_from", "no such job")
    if not start.has_adapter:
        raise InputError(
            "start_from",
            f"job {start.short_id} is {start.status} and has no adapter to start from; pick a succeeded job",
        )
    if start.base_model_id != base_model.id:
        raise InputError(
            "start_from",
            f"job {start.short_id} trained {start.base_model.name}, not "
            f"{base_model.name}; pick a job on the same base model",
        )
    if start.config.get("init_lora_weights") == "pissa":
        raise InputError(
            "start_from",
            f"job {start.short_id} used PiSSA, whose adapter is converted for the "
            "original base; pick a job with the default init",
        )
    shape = {k: start.config[k] for k in ADAPTER_SHAPE_FIELDS if k in start.config}
    return dataclasses.replace(config, start_from=str(start.id), **shape)


def job_check_method(*, dataset: Dataset, config: TrainConfig, field: str = "method") -> None:
    """InputError naming `field` unless the dataset is of the method's kind: preference pairs for DPO / ORPO,
    examples with answers (or texts) for supervised tuning (read from the file's first line)."""
    kind = normalized_kind(blobs.fetch(dataset.normalized_file)) if dataset.normalized_file else "examples"
    _method_matches(kind, dataset.name, config, field)


def _check_snapshot_method(job: FineTuneJob, config: TrainConfig) -> None:
    """The method check of a retry, on the data snapshot it copies (its dataset may be gone)."""
    path = blobs.fetch(job_files(job, "data/train.jsonl"))
    _method_matches(normalized_kind(path) if path.is_file() else "examples", job.dataset_name, config, "method")


def _method_matches(kind: str, name: str, config: TrainConfig, field: str) -> None:
    pairs = kind == "pairs"
    if config.is_reinforcement and kind != "prompts":
        raise InputError(
            field,
            f"reinforcement learns from prompts whose answers graders score, and the dataset '{name}' holds "
            f"{'preference pairs' if pairs else 'examples with answers'}; pick a dataset of prompts "
            "(messages ending with a user message) or another method",
        )
    if kind == "prompts" and not config.is_reinforcement:
        raise InputError(
            field,
            f"the dataset '{name}' holds prompts without answers: train it with method reinforcement and a "
            "grader that scores the answers",
        )
    if config.is_reinforcement:
        return
    if config.is_preference and not pairs:
        raise InputError(
            field,
            f"{config.method} trains on preference pairs (prompt, chosen, rejected) and the "
            f"dataset '{name}' holds plain examples; pick a preference dataset or "
            "method supervised",
        )
    if pairs and not config.is_preference:
        raise InputError(
            field,
            f"the dataset '{name}' holds preference pairs; train it with method dpo "
            "or orpo, or pick a dataset of examples for supervised tuning",
        )


def _validation_record(
    *, owner, dataset: Dataset, config: TrainConfig, kind: str | None, percent: Any, seed: Any, other: Dataset | None
) -> dict:
    """The validation set as the job's row keeps it, its rules checked (row counts only, no file read)."""
    kind = kind or ("dataset" if other is not None else "none")
    problems = validation_problems(
        owner=owner, dataset=dataset, config=config, kind=kind, percent=percent, seed=seed, other=other
    )
    if problems:
        raise problems[0]
    if kind == "split":
        return {"kind": "split", "percent": percent, "seed": seed}
    if kind == "dataset":
        assert other is not None, "validation_problems refuses kind dataset without one"
        return {"kind": "dataset", "dataset": str(other.id), "dataset_name": other.name}
    return {"kind": "none"}


def validation_problems(
    *,
    owner,
    dataset: Dataset | None,
    config: TrainConfig | None,
    kind: str | None,
    percent: Any,
    seed: Any,
    other: Dataset | None,
) -> list[InputError]:
    """Every rule of the validation set it breaks, all at once (the form shows them together); the plan raises
    the first. Without `config` (itself still wrong) the validation dataset's kind is not checked."""
    if kind not in VALIDATION_KINDS:
        return [InputError("validation", f"must be one of {', '.join(VALIDATION_KINDS)}, got {kind!r}")]
    found = []
    if kind == "split":
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 < percent < 100:
            found.append(InputError("validation_percent", "must be between 0 and 100"))
        elif dataset is not None and dataset.rows < 2:
            found.append(InputError("validation_percent", "the dataset has too few examples to split"))
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            found.append(InputError("validation_seed", "must be a whole number, 0 or more"))
    elif kind == "dataset":
        if other is None:
            found.append(InputError("validation_dataset", "pick the dataset to validate on"))
        elif other.owner_id != owner.id:
            found.append(InputError("validation_dataset", "no such dataset"))
        elif dataset is not None and other.id == dataset.id:
            found.append(InputError("validation_dataset", "must differ from the training dataset (or use a split)"))
        elif config is not None:
            try:
                job_check_method(dataset=other, config=config, field="validation_dataset")
            except InputError as exc:
                found.append(exc)
    return found


def _fleet_limit(fleet: list[tuple[str, Capacity]], devices: int) -> tuple[str, float]:
    """The live worker with the most memory among those with `devices` devices: (name, MB); ("", 0) if none."""
    able = [(capacity.memory_mb, name) for name, capacity in fleet if capacity.max_devices >= devices]
    memory, name = max(able) if able else (0.0, "")
    return name, memory


def _fit_refusal(est: Estimate, devices: int, fleet: list[tuple[str, Capacity]]) -> str:
    """Why a job of this estimate is refused now, with the figures and the advice; "" when it is accepted: it
    fits the biggest live train worker, or ROUTING_NO_FIT is wait (it then waits for one). While no worker has
    announced it must fit this machine's memory (TRAIN_MEMORY_LIMIT_MB)."""
    if est.fits:
        return ""
    if not fleet:
        return (
            f"this job would not fit in memory (about {est.memory_mb:,.0f} MB needed, "
            f"{est.memory_limit_mb:,.0f} MB available). " + advice_sentence(est.advice)
        )
    if settings.ROUTING_NO_FIT == "wait":
        return ""
    name, memory = _fleet_limit(fleet, devices)
    if not name:
        most = max(capacity.max_devices for _, capacity in fleet)
        return (
            f"this job trains on {devices} devices and no live train worker has that many "
            f"(at most {most}); it is refused (ROUTING_NO_FIT=refuse)"
        )
    return (
        f"this job needs about {est.memory_mb:,.0f} MB of memory per device and the "
        f"biggest live train worker ({name}) has {memory:,.0f} MB; it is refused "
        "(ROUTING_NO_FIT=refuse). " + advice_sentence(est.advice)
    )


def job_estimate(
    *,
    owner,
    dataset: Dataset | None,
    base_model: BaseModel,
    config: TrainConfig,
    fleet: list[tuple[str, Capacity]] | None = None,
    rows: int = 0,
    grader: dict | None = None,
) -> Estimate:
    """Pre-flight (the plan's estimate): exact trainable parameters, adapter size, memory and time. The memory it
    must fit is the biggest live train worker's (`fleet`), or this machine's while none has announced. Lengths
    come from the dataset's stored token profile; `rows` counts a retry's snapshot whose dataset is gone."""
    fleet = live_capacities() if fleet is None else fleet
    report = None
    if dataset is not None:
        report, _ = dataset_token_report(
            dataset=dataset,
            model_path=base_model.path,
            max_length=config.max_seq_length,
            answer_tokens=config.max_answer_tokens if config.is_reinforcement else 0,
        )
        rows = dataset.rows
    # A sequence's room; reinforcement's lengths are its prompts', cut to what the sampled answers leave.
    room = (
        max(1, config.max_seq_length - config.max_answer_tokens) if config.is_reinforcement else config.max_seq_length
    )
    if report is not None:
        lengths = [min(n, room) for n in report.lengths] or [room]
    elif dataset is not None:  # still being counted in a worker: about 3 characters a token, plus the chat template
        chars_per_row = (dataset.stats or {}).get("chars", 0) / max(1, dataset.rows)
        lengths = [min(room, int(chars_per_row / 3) + 32)]
    else:
        lengths = [room]
    tokens_per_s = selectors.measured_tokens_per_s(owner=owner, base_model=base_model, qlora=config.qlora)
    device, limit, limit_of = _estimate_device(config, fleet)
    est = estimate(
        base_model.local_path,
        config,
        n_examples=max(1, rows),
        mean_tokens=sum(lengths) / len(lengths),
        device=device,
        tokens_per_s=tokens_per_s,
        memory_limit_mb=limit,
        flops_per_s=None if tokens_per_s else machine_speed(device=device, config=config),
        data=_data_shape(report),
        judge_paths=judge_paths(owner=owner, grader=grader, base_model=base_model, config=config),
    )
    if report is not None:
        warnings = truncation_warnings(report)
    elif dataset is None:
        warnings = ["The job's dataset was deleted: the estimate takes every example as max_seq_length tokens."]
    else:
        warnings = [
            (
                f"The token lengths are still being counted: whether max_seq_length {config.max_seq_length} "
                "cuts examples is not known yet."
            )
        ]
    seconds = est.seconds
    if seconds is not None and est.seconds_source == "measured":
        # The steps' own speed leaves out loading, tokenizing and the end-of-job evaluation: add what they took.
        seconds += selectors.measured_overhead_seconds(owner=owner, base_model=base_model) or 0.0
    return dataclasses.replace(
        est, lengths_known=report is not None, warnings=warnings, seconds=seconds, memory_limit_of=limit_of
    )


def _estimate_device(config: TrainConfig, fleet: list[tuple[str, Capacity]]) -> tuple[str, float, str]:
    """(device, memory limit MB, what that limit is in words) the estimate counts for: the live workers' devices
    and the memory of the biggest with the job's devices, or this machine's while none has announced
    (TRAIN_MEMORY_LIMIT_MB, else its RAM)."""
    device = settings.TRAIN_DEVICE
    if not fleet:
        if settings.TRAIN_MEMORY_LIMIT_MB:
            return device, settings.TRAIN_MEMORY_LIMIT_MB, "set aside for training on this machine"
        return device, (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 2**20, "this machine has"
    if device == "auto":  # the workers' devices, not the web server's (auto precision counts fp32 on CPUs)
        device = "cuda" if all(capacity.device == "cuda" for _, capacity in fleet) else "cpu"
    name, limit = _fleet_limit(fleet, job_devices(config.to_dict()))
    if not name:
        return device, limit, ""
    each = "each GPU of" if dict(fleet)[name].device == "cuda" else ""
    return device, limit, f"{each} the largest train worker has".strip()


def _data_shape(report) -> DataShape:
    """The longest sequence and the mean labelled tokens per sequence at this max length, from the token report."""
    if report is None or not report.lengths:
        return DataShape()
    sequences = len(report.lengths) + len(report.rejected_lengths or [])
    return DataShape(
        longest=max(report.lengths + (report.rejected_lengths or [])), labelled=report.trained_tokens / sequences
    )


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
    """QuotaExceeded if the owner may not start (or queue) more training now. The figures come from one pass
    over what the domains report (training counts its active jobs and today's compute there)."""
    used = reported_usage(owner)
    if new_job:
        check_limit(owner, "active_jobs", used=used.get("active_jobs", 0))
    check_limit(owner, "compute_seconds_per_day", used=used.get("compute_seconds_per_day", 0))
    check_limit(owner, "storage_bytes", used=used.get("storage_bytes", 0), adding=0)
