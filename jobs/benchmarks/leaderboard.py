"""A dataset's leaderboard: every job of the owner that trained on it (sweep trials marked with their sweep and
trial number), ranked by one metric, with the settings where the listed runs differ, the latest benchmark run
and the judge's verdicts beside each. Finished runs with a value come first (ties share a rank); runs without
the value, still going, pruned, failed or cancelled follow, unranked. No adapter can be imported yet, so every
entry is a job trained here.

Metrics: `eval_loss` (the kept adapter's error on the held-out examples, lower is better), `exact_match` (the
end-of-job evaluation's share of exact answers) and `benchmark:<task>` / `benchmark_change:<task>` (a task's
adapted score in the job's latest finished benchmark run, or its change from the base model); higher is better
for all but the loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q
from django.urls import reverse

from jobs.arena.models import Judgement
from jobs.arena.selectors import judgement_report
from jobs.arena.win_rate import percent
from jobs.benchmarks.models import BenchmarkRun
from jobs.benchmarks.selectors import benchmark_warnings
from jobs.common.ids import is_uuid
from jobs.datasets.models import Dataset
from jobs.training.files import job_evaluation
from jobs.training.models import FineTuneJob, JobStatus, MetricPoint
from jobs.training.runs_table import Row, runs_table
from jobs.training.selectors import ft_model_id, job_device, job_list
from jobs.training.summary import kept_eval_loss
from worker.benchmarks import SUITES
from worker.errors import InputError

DEFAULT_METRIC = "eval_loss"
# Always shown in an entry's settings, whether or not the runs differ on them: what a person tunes first.
KEY_SETTINGS = ("method", "rank", "learning_rate", "epochs")
# The rows of the runs table that say nothing on one dataset's page (every run trained on it).
SAME_BY_DEFINITION = ("dataset",)
# Succeeded jobs' evaluations, by job id: one is written before its job is marked done and never again, so each is
# read from the store once per process (at most this many kept).
_EVALUATIONS: dict[str, dict | None] = {}
EVALUATIONS_KEPT = 1024
# At most this many runs go to "Compare" from the top of the board (the compare page shows 8 at most).
COMPARE_TOP = 3


@dataclass(frozen=True)
class Metric:
    """What the board ranks by: its value as given (`benchmark:gsm8k`), in words, and which way is better."""

    name: str
    label: str
    hint: str
    lower_is_better: bool
    task: str = ""
    change: bool = False

    @property
    def direction(self) -> str:
        return "lower" if self.lower_is_better else "higher"


EVAL_LOSS = Metric(
    "eval_loss",
    "Error on held-out examples",
    "Lower is better: how wrong the adapter is on the examples of your data held back from training.",
    lower_is_better=True,
)
EXACT_MATCH = Metric(
    "exact_match",
    "Exact answers on held-out examples",
    "Higher is better: the share of held-back examples the adapter answers exactly as your data does.",
    lower_is_better=False,
)


def suite_tasks() -> set[str]:
    """Every built-in suite's harness task names (the bundled suite's are listed by the runs themselves)."""
    return {task for suite in SUITES.values() for task in suite.tasks}


def metric_parse(value: str | None, *, tasks: set[str]) -> Metric:
    """The metric named by `value` (empty: the eval loss); InputError on `metric` for an unknown one. `tasks`:
    the benchmark tasks that may be named (the built-in ones and any the listed runs were benchmarked on)."""
    value = (value or "").strip() or DEFAULT_METRIC
    if value == EVAL_LOSS.name:
        return EVAL_LOSS
    if value == EXACT_MATCH.name:
        return EXACT_MATCH
    kind, _, task = value.partition(":")
    if kind in ("benchmark", "benchmark_change") and task in tasks:
        change = kind == "benchmark_change"
        return Metric(
            value,
            f"{task}: change from the base model" if change else f"{task}: benchmark score",
            (
                f"Higher is better: how many points the adapter gained over its base model on {task} "
                "(below zero: it lost some)."
                if change
                else f"Higher is better: the adapter's score on the {task} benchmark, in its latest finished run."
            ),
            lower_is_better=False,
            task=task,
            change=change,
        )
    known = ", ".join(["eval_loss", "exact_match", *(f"benchmark:{t}" for t in sorted(tasks))])
    raise InputError(
        "metric",
        f"unknown metric {value!r}: use eval_loss, exact_match, benchmark:<task> or benchmark_change:<task> "
        f"(one of {known})",
    )


@dataclass
class Entry:
    """One run on the board."""

    job: FineTuneJob
    value: float | None
    sweep: dict[str, Any] | None  # id, name and trial number of a sweep's trial
    benchmark: dict[str, Any] | None  # the latest benchmark run: status, tasks, warnings
    judge: list[dict[str, Any]]  # judgements with the job on one side, from its side
    settings: list[dict[str, Any]] = field(default_factory=list)  # label, text, differs
    rank: int | None = None
    compare_url: str = ""
    value_text: str = ""

    @property
    def ft_model(self) -> str:
        return ft_model_id(self.job)

    @property
    def chat_url(self) -> str:
        """The job's chat and compare page, once it has an adapter to chat with."""
        return reverse("job-compare", args=[self.job.id]) if self.job.has_adapter else ""

    @property
    def finished(self) -> bool:
        return self.job.status == JobStatus.SUCCEEDED


@dataclass
class Leaderboard:
    dataset: Dataset
    metric: Metric
    metrics: list[Metric]  # what else it can rank by: the two evaluations and each benchmarked task
    entries: list[Entry]
    differing: list[str]  # the labels of the settings the listed runs differ on
    compare_top_url: str = ""


def value_words(metric: Metric, value: float | None) -> str:
    """A value as the page shows it: a loss to 4 decimals, a rate as a percent, a change in points."""
    if value is None:
        return "–"
    if metric.lower_is_better:
        return f"{value:.4f}"
    if metric.change:
        return f"{value * 100:+.1f} points"
    return f"{value * 100:.1f} %"


def _task_words(task: str, base: float | None, adapted: float | None) -> str:
    if base is None or adapted is None:
        return f"{task}: " + (f"{adapted * 100:.1f} %" if adapted is not None else "no score")
    return f"{task}: {base * 100:.1f} % → {adapted * 100:.1f} % ({(adapted - base) * 100:+.1f} points)"


def _benchmark_summary(run: BenchmarkRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    tasks = []
    for result in run.results or []:
        base, adapted = result.get("base"), result.get("adapted")
        tasks.append(
            {
                "task": result["task"],
                "metric": result.get("metric", ""),
                "base": base["value"] if base else None,
                "adapted": adapted["value"] if adapted else None,
                "change": adapted["value"] - base["value"] if base and adapted else None,
                "unavailable": result.get("unavailable") or "",
                "words": _task_words(
                    result["task"], base["value"] if base else None, adapted["value"] if adapted else None
                ),
            }
        )
    return {
        "id": str(run.id),
        "status": run.status,
        "tasks": tasks,
        "warnings": benchmark_warnings(run) if run.status == BenchmarkRun.Status.READY else [],
    }


def _judge_summary(owner, judgement: Judgement, model: str) -> dict[str, Any]:
    """A finished judgement from `model`'s side: its win rate against the other side with a 95% interval, and how
    often the judge agreed with the owner's blind votes."""
    report = judgement_report(owner=owner, judgement=judgement)
    tally, agreement = report["tally"], report["agreement"]
    rate, low, high = tally["win_rate"], tally["ci_low"], tally["ci_high"]
    ours = judgement.model_a == model
    if not ours and rate is not None:
        rate, low, high = 1 - rate, 1 - high, 1 - low
    opponent = judgement.model_b if ours else judgement.model_a
    return {
        "id": str(judgement.id),
        "opponent": opponent,
        "judge": judgement.judge,
        "n": tally["n"],
        "win_rate": rate,
        "ci_low": low,
        "ci_high": high,
        "words": (
            f"won {percent(rate)} against {opponent} (likely {percent(low)} to {percent(high)}, {tally['n']} prompts)"
            if rate is not None
            else f"no usable verdict against {opponent}"
        ),
        "agreement": {
            "n": agreement["n"],
            "agreed": agreement["agreed"],
            "rate": agreement["rate"],
            "ci_low": agreement["ci_low"],
            "ci_high": agreement["ci_high"],
        },
    }


def evaluation_of(job: FineTuneJob) -> dict | None:
    """The end-of-job evaluation of a succeeded or pruned job (None for others): a succeeded job's is kept once read."""
    if job.status == JobStatus.PRUNED:
        return job_evaluation(job)
    if job.status != JobStatus.SUCCEEDED:
        return None
    key = str(job.id)
    if key not in _EVALUATIONS:
        while len(_EVALUATIONS) >= EVALUATIONS_KEPT:
            _EVALUATIONS.pop(next(iter(_EVALUATIONS)))
        _EVALUATIONS[key] = job_evaluation(job)
    return _EVALUATIONS[key]


def _value(metric: Metric, job: FineTuneJob, evaluation: dict | None, points, benchmark: dict | None):
    if metric is EVAL_LOSS:
        return kept_eval_loss(
            evaluation=evaluation, eval_points=points, keep_best=bool(job.config.get("keep_best", True))
        )
    if metric is EXACT_MATCH:
        exact = (((evaluation or {}).get("rates") or {}).get("adapter") or {}).get("exact")
        return float(exact) if exact is not None else None
    if benchmark is None or benchmark["status"] != BenchmarkRun.Status.READY:
        return None
    for task in benchmark["tasks"]:
        if task["task"] == metric.task:
            return task["change"] if metric.change else task["adapted"]
    return None


def rank_entries(entries: list[Entry], metric: Metric) -> list[Entry]:
    """Finished runs with a value first, best first (equal values share a rank, the older run listed first); then,
    unranked, finished runs without the value, then the others (still going, pruned, failed, cancelled), those with
    a value by it."""

    def key(entry: Entry) -> tuple:
        value = entry.value
        signed = 0.0 if value is None else (value if metric.lower_is_better else -value)
        group = 0 if entry.finished and value is not None else 1 if entry.finished else 2
        return (group, value is None, signed, entry.job.created)

    ranked = sorted(entries, key=key)
    previous: tuple[float | None, int] | None = None
    for position, entry in enumerate(ranked, start=1):
        if not entry.finished or entry.value is None:
            entry.rank = None
            continue
        entry.rank = previous[1] if previous is not None and previous[0] == entry.value else position
        previous = (entry.value, entry.rank)
    return ranked


def _settings(rows: list[Row], index: int) -> list[dict[str, Any]]:
    shown = [row for row in rows if row.name not in SAME_BY_DEFINITION and (row.differs or row.name in KEY_SETTINGS)]
    return [
        {"name": row.name, "label": row.label, "text": row.cells[index].text, "differs": row.differs}
        for row in shown
        if row.cells[index].applies or row.differs
    ]


def _compare_url(*job_ids) -> str:
    ids = list(dict.fromkeys(str(i) for i in job_ids))
    return reverse("runs-compare") + "?" + "&".join(f"job={i}" for i in ids) if len(ids) > 1 else ""


def _latest_benchmarks(owner, ids: list) -> tuple[dict[Any, BenchmarkRun], dict[Any, BenchmarkRun]]:
    """Each job's latest benchmark run, and its latest finished one."""
    latest: dict[Any, BenchmarkRun] = {}
    latest_ready: dict[Any, BenchmarkRun] = {}
    for run in BenchmarkRun.objects.filter(owner=owner, job_id__in=ids).order_by("-created"):
        latest.setdefault(run.job_id, run)
        if run.status == BenchmarkRun.Status.READY:
            latest_ready.setdefault(run.job_id, run)
    return latest, latest_ready


def _eval_points(ids: list) -> dict[Any, list[tuple[float | None, bool]]]:
    """Each job's logged eval losses in step order with whether each was a new best (selectors.job_eval_losses,
    in one query for every job)."""
    points: dict[Any, list[tuple[float | None, bool]]] = {job_id: [] for job_id in ids}
    rows = MetricPoint.objects.filter(job_id__in=ids, eval_loss__isnull=False).order_by("job_id", "step")
    for job_id, loss, extra in rows.values_list("job_id", "eval_loss", "extra"):
        points[job_id].append((loss, bool((extra or {}).get("best"))))
    return points


def _judged(owner, jobs: list[FineTuneJob]) -> dict[Any, list[dict[str, Any]]]:
    """Each job's finished judgements (it on either side), newest first, from its side."""
    models = {ft_model_id(job): job for job in jobs}
    judgements = (
        Judgement.objects.filter(owner=owner, status=Judgement.Status.DONE)
        .filter(Q(model_a__in=list(models)) | Q(model_b__in=list(models)))
        .order_by("-created")
    )
    judged: dict[Any, list[dict[str, Any]]] = {job.id: [] for job in jobs}
    for judgement in judgements:
        for name in (judgement.model_a, judgement.model_b):
            if name in models:
                judged[models[name].id].append(_judge_summary(owner, judgement, name))
    return judged


def _settings_table(owner, jobs: list[FineTuneJob]) -> list[Row]:
    """Compare runs' rows of the jobs' settings (jobs.training.runs_table), whose `differs` marks the board."""
    parents = [job.config.get("start_from") for job in jobs]
    started_from = {str(j.id): j for j in job_list(owner=owner).filter(id__in=[p for p in parents if is_uuid(p)])}
    return runs_table(jobs, devices=[job_device(job) for job in jobs], started_from=started_from)


def _link_compare(ranked: list[Entry]) -> str:
    """Each run's Compare link (it beside the best; the best's: the top runs); returns the top runs' link."""
    top = [entry.job.id for entry in ranked if entry.rank is not None][:COMPARE_TOP]
    for entry in ranked:
        entry.compare_url = _compare_url(entry.job.id, top[0]) if top else ""
    if top:
        ranked[0].compare_url = _compare_url(*top)
    return _compare_url(*top)


def dataset_leaderboard(*, owner, dataset: Dataset, metric: str | None = None) -> Leaderboard:
    """The owner's runs on `dataset` (one of the owner's, from datasets.selectors.dataset_get), ranked by
    `metric` (InputError on `metric` for an unknown one)."""
    jobs = list(
        job_list(owner=owner)
        .filter(dataset=dataset)
        .select_related("adapter", "owner", "sweep_trial__sweep")
        .order_by("created")
    )
    ids = [job.id for job in jobs]
    latest, latest_ready = _latest_benchmarks(owner, ids)
    benchmarked = {r["task"] for run in latest_ready.values() for r in run.results or [] if r.get("adapted")}
    chosen = metric_parse(metric, tasks=suite_tasks() | benchmarked)
    points = _eval_points(ids)
    judged = _judged(owner, jobs)
    table = _settings_table(owner, jobs)
    entries = []
    for index, job in enumerate(jobs):
        evaluation = evaluation_of(job) if chosen.task == "" else None
        # The latest finished benchmark run gives the value and the column; else the latest run says how it goes.
        summary = _benchmark_summary(latest.get(job.id))
        ready = _benchmark_summary(latest_ready.get(job.id))
        trial = getattr(job, "sweep_trial", None)
        entries.append(
            Entry(
                job=job,
                value=_value(chosen, job, evaluation, points[job.id], ready),
                sweep=(
                    {"id": str(trial.sweep_id), "name": trial.sweep.name or trial.sweep.short_id, "trial": trial.number}
                    if trial is not None
                    else None
                ),
                benchmark=ready or summary,
                judge=judged[job.id],
                settings=_settings(table, index),
            )
        )
    ranked = rank_entries(entries, chosen)
    for entry in ranked:
        entry.value_text = value_words(chosen, entry.value)
    compare_top_url = _link_compare(ranked)
    metrics = [EVAL_LOSS, EXACT_MATCH]
    for task in sorted(benchmarked):
        metrics += [metric_parse(f"{kind}:{task}", tasks=benchmarked) for kind in ("benchmark", "benchmark_change")]
    if chosen not in metrics:
        metrics.append(chosen)
    return Leaderboard(
        dataset=dataset,
        metric=chosen,
        metrics=metrics,
        entries=ranked,
        differing=[row.label for row in table if row.differs and row.name not in SAME_BY_DEFINITION],
        compare_top_url=compare_top_url,
    )
