"""Writes for sweeps: create one, move it on (the next trials, as workers free up), prune a trial that reports a poor
metric, pause, resume, cancel, promote the best trial. Every trial is an ordinary job made by the one plan path
(`job_plan` -> `job_create`), so the queue, its fair order, routing by fit and the quotas apply to it.

`sweep_advance` is safe to run anywhere, often, at once in several processes: it is called when a trial's job ends
(training's `job_finished`), after create and resume, and by the periodic sweep (`jobs.sweeps.tasks`), so a lost
call delays a sweep by one period and never strands it. A trial's number is unique per sweep, taken under the
sweep's row lock, so two processes never create the same trial twice."""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs.accounts.limits import QuotaExceeded
from jobs.base_models.models import BaseModel
from jobs.common.exceptions import StateError
from jobs.datasets.models import Dataset
from jobs.sweeps import study
from jobs.sweeps.models import SWEEP_TERMINAL, Sweep, SweepStatus, SweepTrial
from jobs.sweeps.selectors import sweep_metric, sweep_spec, trial_records, trial_result
from jobs.training import services as job_services
from jobs.training.models import TERMINAL_STATUSES, FineTuneJob, JobStatus, MetricPoint
from jobs.training.plan import JobPlan, job_plan
from worker.config import ConfigError, TrainConfig
from worker.errors import InputError
from worker.schedule import eval_interval

log = logging.getLogger(__name__)

MAX_TRIALS = 200
MAX_TRIALS_AUTO = 20  # the job form's Auto preset with a budget in minutes: trials until the time is up, at most
MAX_PARALLELISM = 16
DEFAULT_PARALLELISM = 2


class SweepStateError(StateError):
    """The sweep is not in a state that allows this action."""


def _checked_fixed(fixed: Any) -> dict[str, Any]:
    """The settings every trial shares, checked by TrainConfig; InputError naming `fixed.<setting>`."""
    if not isinstance(fixed, dict):
        raise InputError("fixed", "must be an object of job settings")
    try:
        TrainConfig.from_dict(fixed)
    except ConfigError as exc:
        raise InputError(f"fixed.{exc.field}", exc.message) from None
    return dict(fixed)


def _validation(validation: str | None, percent: Any, seed: Any, other: Dataset | None) -> dict[str, Any]:
    kind = validation or ("dataset" if other is not None else "split")
    if kind not in ("split", "dataset"):
        raise InputError("validation", "a sweep ranks its trials on held-out data: use split or dataset")
    record: dict[str, Any] = {"kind": kind, "percent": percent, "seed": seed}
    if other is not None:
        record["dataset"] = str(other.id)
    return record


def _bounded(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(name, f"must be a whole number between {low} and {high} (you gave {value!r})")
    return value


def _one_eval_schedule(fixed: dict[str, Any], distributions: dict, plan: JobPlan) -> dict[str, Any]:
    """`fixed` with one evaluation schedule for every trial (that of the first, shortest one, unless the user set
    one): the pruner compares trials at the same steps, not one trial's loss after 5 steps with another's after 1."""
    if "eval_every" in fixed or "eval_every" in distributions:
        return fixed
    return {**fixed, "eval_every": eval_interval(plan.config, plan.estimate.steps)}


def sweep_create(
    *,
    owner,
    dataset: Dataset,
    base_model: BaseModel,
    space: Any,
    fixed: Any = None,
    trials: Any = 8,
    metric: str = study.LOSS_METRIC,
    sampler: str = "tpe",
    pruner: str = "successive_halving",
    parallelism: Any = DEFAULT_PARALLELISM,
    minutes: Any = None,
    seed: Any = 0,
    name: str = "",
    validation: str | None = None,
    validation_percent: Any = 10.0,
    validation_seed: Any = 42,
    validation_dataset: Dataset | None = None,
) -> Sweep:
    """Check everything a sweep's trials will need (every field named in its error: `space.rank`,
    `fixed.learning_rate`, `metric`...), store the sweep and start its first trials."""
    fixed = _checked_fixed(fixed if fixed is not None else {})
    distributions = study.parse_space(space, fixed)
    config = TrainConfig.from_dict(fixed)
    if config.is_reinforcement:
        raise InputError("fixed.method", "a sweep of reinforcement jobs (with a grader) is not possible yet")
    chosen = study.metric_of(metric, config)
    if sampler not in study.SAMPLERS:
        raise InputError("sampler", f"must be one of {', '.join(study.SAMPLERS)}, got {sampler!r}")
    if pruner not in study.PRUNERS:
        raise InputError("pruner", f"must be one of {', '.join(study.PRUNERS)}, got {pruner!r}")
    trials = _bounded("trials", trials, 1, MAX_TRIALS)
    if sampler == "grid":
        trials = min(trials, math.prod(len(v) for v in study.grid_of(distributions).values()))
    parallelism = _bounded("parallelism", parallelism, 1, MAX_PARALLELISM)
    if minutes is not None:
        minutes = _bounded("minutes", minutes, 1, 7 * 24 * 60)
    seed = _bounded("seed", seed, 0, 2**31 - 1)
    record = _validation(validation, validation_percent, validation_seed, validation_dataset)
    # The first trial's plan, without refusal: the dataset, model, validation and method checks of every caller.
    first = {name: _first_value(d) for name, d in distributions.items()}
    try:
        plan = job_plan(
            owner=owner,
            dataset=dataset,
            base_model=base_model,
            config=TrainConfig.from_dict({**fixed, **first}),
            validation=record["kind"],
            validation_percent=validation_percent,
            validation_seed=validation_seed,
            validation_dataset=validation_dataset,
            refuse=False,
        )
    except ConfigError as exc:
        where = "space" if exc.field in distributions else "fixed"
        raise InputError(f"{where}.{exc.field}", exc.message) from None
    fixed = _one_eval_schedule(fixed, distributions, plan)
    sweep = Sweep.objects.create(
        owner=owner,
        name=name.strip()[:200],
        dataset=dataset,
        base_model=base_model,
        space=study.space_json(distributions),
        fixed=fixed,
        validation=record,
        metric=chosen.name,
        direction=chosen.direction,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        trials=trials,
        minutes=minutes,
        parallelism=parallelism,
    )
    sweep_advance(sweep_id=sweep.id)
    sweep.refresh_from_db()
    return sweep


def _first_value(distribution) -> Any:
    if isinstance(distribution, study.CategoricalDistribution):
        return distribution.choices[0]
    return distribution.low


# --- moving a sweep on -------------------------------------------------------------------------------


def trials_settle(sweep: Sweep) -> int:
    """Record the end of each trial whose job ended (its state and value, for the study); how many changed."""
    changed = 0
    metric = sweep_metric(sweep)
    for trial in sweep.trial_rows.filter(state=SweepTrial.State.RUNNING).select_related("job"):
        job = trial.job
        if job is not None and job.status not in TERMINAL_STATUSES:
            continue
        state, value, error = trial_result(job, metric)
        changed += SweepTrial.objects.filter(id=trial.id, state=SweepTrial.State.RUNNING).update(
            state=state, value=value, error=error
        )
    return changed


def _out_of_time(sweep: Sweep) -> bool:
    return sweep.minutes is not None and timezone.now() >= sweep.created + dt.timedelta(minutes=sweep.minutes)


def sweep_advance(*, sweep_id) -> list[int]:
    """Settle the ended trials, start new ones while fewer than `parallelism` run and the budget (trials, minutes)
    allows, and end the sweep once its last trial ended. Returns the numbers of the trials started."""
    sweep = Sweep.objects.filter(id=sweep_id).select_related("owner", "dataset", "base_model").first()
    if sweep is None:
        return []
    trials_settle(sweep)
    started: list[int] = []
    while sweep.status == SweepStatus.RUNNING:
        rows = sweep.trial_rows.all()
        made, active = rows.count(), rows.filter(state=SweepTrial.State.RUNNING).count()
        if made >= sweep.trials or _out_of_time(sweep):
            if not active:
                _sweep_end(sweep)
            break
        if active >= sweep.parallelism:
            break
        number = _trial_start(sweep, made)
        if number is None:
            break
        started.append(number)
        sweep.refresh_from_db()
    return started


def _sweep_end(sweep: Sweep) -> None:
    done = sweep.trial_rows.filter(state=SweepTrial.State.COMPLETE).exists()
    Sweep.objects.filter(id=sweep.id, status=SweepStatus.RUNNING).update(
        status=SweepStatus.SUCCEEDED if done else SweepStatus.FAILED, finished=timezone.now(), waiting=""
    )


def _trial_start(sweep: Sweep, number: int) -> int | None:
    """Ask the study for trial `number`'s settings and create its job (or record why it cannot run); None when
    it must wait (a quota) or another process took this number."""
    params = study.ask(sweep_spec(sweep), trial_records(sweep))
    validation_dataset = None
    if sweep.validation.get("kind") == "dataset":
        validation_dataset = Dataset.objects.filter(id=sweep.validation.get("dataset"), owner=sweep.owner).first()
    try:
        plan = job_plan(
            owner=sweep.owner,
            dataset=sweep.dataset,
            base_model=sweep.base_model,
            config=TrainConfig.from_dict({**sweep.fixed, **params}),
            validation=sweep.validation.get("kind"),
            validation_percent=sweep.validation.get("percent", 10.0),
            validation_seed=sweep.validation.get("seed", 42),
            validation_dataset=validation_dataset,
        )
    except QuotaExceeded as exc:
        Sweep.objects.filter(id=sweep.id).update(waiting=f"the next trial waits: {exc.message}"[:300])
        return None
    except InputError as exc:  # these settings cannot run (a rule between settings, no fit): a failed trial
        plan, error = None, f"{exc.field}: {exc.message}"
    try:
        with transaction.atomic():
            locked = Sweep.objects.select_for_update().get(id=sweep.id)
            if locked.status != SweepStatus.RUNNING or locked.trial_rows.count() != number:
                return None  # paused or cancelled meanwhile, or another process made this trial
            trial = SweepTrial.objects.create(sweep=locked, number=number, params=params)
            if plan is None:
                trial.state, trial.error = SweepTrial.State.FAILED, error
            else:
                label = sweep.name or f"sweep {sweep.short_id}"
                trial.job = job_services.job_create(plan=plan, name=f"{label} · trial {number}")
            trial.save()
            Sweep.objects.filter(id=sweep.id).update(waiting="")
    except IntegrityError:
        return None
    except QuotaExceeded as exc:  # the storage quota, checked as the data snapshot is written
        Sweep.objects.filter(id=sweep.id).update(waiting=f"the next trial waits: {exc.message}"[:300])
        return None
    return number


def trial_prune_check(*, job_id, step: int) -> bool:
    """The pruner's verdict on a sweep's running trial that just reported an evaluation at `step`; a trial to
    prune gets the stop request "prune" (its worker ends it as pruned before its next step, freeing the worker).
    The rungs the pruner reached are kept on the trial's row for later decisions. Whether it is pruned."""
    trial = SweepTrial.objects.filter(job_id=job_id, state=SweepTrial.State.RUNNING).select_related("sweep").first()
    if trial is None or trial.sweep.pruner == "none" or trial.sweep.is_terminal:
        return False
    job = FineTuneJob.objects.filter(id=job_id).only("status", "total_steps", "stop_requested").first()
    if job is None or job.status != JobStatus.RUNNING or job.stop_requested:
        return False
    point = MetricPoint.objects.filter(job_id=job_id, step=step).first()
    if point is None or sweep_metric(trial.sweep).step_value(point.as_event()) is None:
        return False
    if job.total_steps and step >= job.total_steps:
        return False  # the last evaluation: the trial has finished its work, let it complete
    prune, attrs = study.should_prune(sweep_spec(trial.sweep), trial_records(trial.sweep), trial.number)
    SweepTrial.objects.filter(id=trial.id).update(system_attrs=attrs)
    if prune and FineTuneJob.objects.filter(id=job_id, status=JobStatus.RUNNING, stop_requested="").update(
        stop_requested="prune"
    ):
        job_services.job_event(
            job_id=job_id,
            kind="prune",
            message=f"pruned at step {step}: the sweep's other trials did better by this point",
        )
        return True
    return False


# --- the user's actions ---------------------------------------------------------------------------


def _own(sweep: Sweep, by) -> None:
    if sweep.owner_id != by.id:
        raise SweepStateError("not your sweep")


def _active_jobs(sweep: Sweep):
    return FineTuneJob.objects.filter(sweep_trial__sweep=sweep).exclude(status__in=TERMINAL_STATUSES)


def sweep_pause(*, sweep: Sweep, by) -> Sweep:
    """No new trial; the queued and running trials pause (a running one at its next checkpoint)."""
    _own(sweep, by)
    if not Sweep.objects.filter(id=sweep.id, status=SweepStatus.RUNNING).update(status=SweepStatus.PAUSED):
        sweep.refresh_from_db()
        raise SweepStateError(f"a {sweep.status} sweep cannot be paused")
    for job in _active_jobs(sweep).filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]):
        try:
            job_services.job_pause(job=job, by=by)
        except StateError:
            pass  # it ended meanwhile
    sweep.refresh_from_db()
    return sweep


def sweep_resume(*, sweep: Sweep, by) -> Sweep:
    """Go on: the paused trials are queued again and new ones start as workers free up."""
    _own(sweep, by)
    if not Sweep.objects.filter(id=sweep.id, status=SweepStatus.PAUSED).update(status=SweepStatus.RUNNING):
        sweep.refresh_from_db()
        raise SweepStateError(f"a {sweep.status} sweep cannot be resumed; only a paused one")
    for job in _active_jobs(sweep).filter(status=JobStatus.PAUSED):
        try:
            job_services.job_resume(job=job, by=by)
        except (StateError, QuotaExceeded):
            pass  # the next advance or the user's own resume takes it from here
    sweep_advance(sweep_id=sweep.id)
    sweep.refresh_from_db()
    return sweep


def sweep_cancel(*, sweep: Sweep, by) -> Sweep:
    """End the sweep: no new trial, and its unfinished trials are cancelled (the finished ones are kept)."""
    _own(sweep, by)
    if (
        not Sweep.objects.filter(id=sweep.id)
        .exclude(status__in=SWEEP_TERMINAL)
        .update(status=SweepStatus.CANCELLED, finished=timezone.now(), waiting="")
    ):
        sweep.refresh_from_db()
        raise SweepStateError(f"a {sweep.status} sweep cannot be cancelled")
    for job in _active_jobs(sweep):
        try:
            job_services.job_cancel(job=job, by=by)
        except StateError:
            pass
    sweep.refresh_from_db()
    return sweep


def sweep_promote(*, sweep: Sweep, by) -> Sweep:
    """The best finished trial's adapter becomes the sweep's result (its `ft:` id serves in chat and /v1/)."""
    _own(sweep, by)
    trials_settle(sweep)
    best = study.best(sweep_spec(sweep), trial_records(sweep))
    job = None
    if best is not None:
        job = FineTuneJob.objects.filter(sweep_trial__sweep=sweep, sweep_trial__number=best.number).first()
    if job is None or not job.has_adapter:
        raise SweepStateError("no trial has finished with an adapter yet; promote once one has")
    Sweep.objects.filter(id=sweep.id).update(result=job)
    sweep.refresh_from_db()
    return sweep
