"""Reads for sweeps: every selector that a user reaches takes the owner (a foreign sweep is the same None as a
missing one, a 404); the study's records and a trial's result are read from the trials' jobs and metric points."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from jobs.sweeps import study
from jobs.sweeps.models import Sweep, SweepTrial
from jobs.training.files import job_evaluation
from jobs.training.models import FineTuneJob, JobStatus, MetricPoint
from jobs.training.selectors import ft_model_id
from worker.config import TrainConfig


def sweep_list(*, owner) -> QuerySet[Sweep]:
    return Sweep.objects.filter(owner=owner).select_related("dataset", "base_model")


def sweep_get(*, owner, sweep_id) -> Sweep:
    """The owner's sweep, or Http404 (another user's sweep does not exist for you)."""
    return get_object_or_404(sweep_list(owner=owner).select_related("result"), id=sweep_id)


def sweep_metric(sweep: Sweep) -> study.Metric:
    return study.metric_of(sweep.metric, TrainConfig.from_dict(sweep.fixed))


def sweep_spec(sweep: Sweep) -> study.StudySpec:
    return study.StudySpec(
        name=f"sweep-{sweep.id}",
        direction=sweep.direction,
        space=study.space_of(sweep.space),
        sampler=sweep.sampler,
        pruner=sweep.pruner,
        seed=sweep.seed,
        trials=sweep.trials,
        min_resource=first_verdict_step(sweep.fixed),
    )


def first_verdict_step(fixed: dict) -> int:
    """No verdict before a trial's second evaluation: one step (or one evaluation) says more about the learning
    rate's first jolt than about where the trial is going."""
    every = fixed.get("eval_every")
    return 2 * every if isinstance(every, int) and every > 0 else 1


def trial_curves(sweep: Sweep) -> dict[int, dict[int, float]]:
    """Trial number -> {step: the step metric as the pruner reads it} (eval loss negated for a score metric)."""
    metric = sweep_metric(sweep)
    jobs = dict(sweep.trial_rows.filter(job__isnull=False).values_list("job_id", "number"))
    curves: dict[int, dict[int, float]] = defaultdict(dict)
    for point in MetricPoint.objects.filter(job_id__in=jobs).order_by("step"):
        value = metric.step_value(point.as_event())
        if value is not None and math.isfinite(value):
            curves[jobs[point.job_id]][point.step] = value
    return curves


def trial_records(sweep: Sweep) -> list[study.TrialRecord]:
    """The study's trials as the rows keep them, with each trial's step metric per evaluation."""
    curves = trial_curves(sweep)
    return [
        study.TrialRecord(
            number=t.number,
            params=t.params,
            state=t.state,
            value=t.value,
            intermediate=curves.get(t.number, {}),
            system_attrs=t.system_attrs,
        )
        for t in sweep.trial_rows.all()
    ]


def _final(job: FineTuneJob, metric: study.Metric) -> float | None:
    """The metric a finished trial is ranked by: the last evaluation's, or the end-of-job exact answers' rate."""
    if metric.name == "exact_match":
        evaluation = job_evaluation(job) or {}
        return ((evaluation.get("rates") or {}).get("adapter") or {}).get("exact")
    key = "eval_loss" if metric.name == study.LOSS_METRIC else metric.step_key
    for point in MetricPoint.objects.filter(job=job).order_by("-step"):
        value = point.as_event().get(key)
        if value is not None:
            return float(value)
    return None


def trial_result(job: FineTuneJob | None, metric: study.Metric) -> tuple[str, float | None, str]:
    """A trial's state, value and error once its job ended (or was deleted)."""
    if job is None:
        return SweepTrial.State.FAILED, None, "its job was deleted"
    if job.status == JobStatus.SUCCEEDED:
        value = _final(job, metric)
        if value is None or not math.isfinite(value):
            return SweepTrial.State.FAILED, None, f"the job reported no {metric.name}"
        return SweepTrial.State.COMPLETE, value, ""
    if job.status == JobStatus.PRUNED:
        values = (metric.step_value(p.as_event()) for p in MetricPoint.objects.filter(job=job).order_by("-step"))
        return SweepTrial.State.PRUNED, next((v for v in values if v is not None), None), ""
    return SweepTrial.State.FAILED, None, job.error or f"the job was {job.status}"


def _model_id(job: FineTuneJob | None) -> str | None:
    return ft_model_id(job) if job is not None and job.has_adapter else None


def sweep_report(sweep: Sweep, *, curves: bool = False) -> dict[str, Any]:
    """The sweep as the API and its page show it: status, every trial (job, settings, status, metric), the best
    trial and its `ft:` id, the promoted result, the settings' importance and, with `curves`, each trial's metric
    per step."""
    spec = sweep_spec(sweep)
    records = trial_records(sweep)
    best = study.best(spec, records)
    trials = []
    for trial in sweep.trial_rows.select_related("job", "job__base_model", "job__owner", "job__adapter"):
        job = trial.job
        trials.append(
            {
                "number": trial.number,
                "job": str(job.id) if job is not None else None,
                "settings": trial.params,
                "state": trial.state,
                "status": (job.status if job is not None else trial.state),
                "metric": trial.value,
                "step": job.step if job is not None else 0,
                "total_steps": job.total_steps if job is not None else 0,
                "fine_tuned_model": _model_id(job),
                "error": trial.error,
            }
        )
    best_trial = next((t for t in trials if best is not None and t["number"] == best.number), None)
    report: dict[str, Any] = {
        "id": str(sweep.id),
        "name": sweep.name,
        "status": sweep.status,
        "waiting": sweep.waiting,
        "dataset": str(sweep.dataset_id) if sweep.dataset_id else None,
        "base_model": str(sweep.base_model_id),
        "space": {name: _space_words(d) for name, d in spec.space.items()},
        "fixed": sweep.fixed,
        "metric": sweep.metric,
        "direction": sweep.direction,
        "sampler": sweep.sampler,
        "pruner": sweep.pruner,
        "trials_budget": sweep.trials,
        "minutes": sweep.minutes,
        "parallelism": sweep.parallelism,
        "trials": trials,
        "best_trial": best_trial["number"] if best_trial else None,
        "best_metric": best.value if best else None,
        "fine_tuned_model": best_trial["fine_tuned_model"] if best_trial else None,
        "result": _model_id(sweep.result),
        "result_job": str(sweep.result_id) if sweep.result_id else None,
        "importance": study.importances(spec, records),
        "created": sweep.created,
        "finished": sweep.finished,
    }
    if curves:
        points = trial_curves(sweep)
        report["curves"] = {str(n): [[step, v] for step, v in sorted(points[n].items())] for n in sorted(points)}
    return report


def _space_words(distribution) -> dict[str, Any]:
    if isinstance(distribution, study.CategoricalDistribution):
        return {"choices": list(distribution.choices)}
    return {"low": distribution.low, "high": distribution.high, "log": distribution.log}
