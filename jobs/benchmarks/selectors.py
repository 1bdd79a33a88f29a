"""Reads of benchmark runs, always for one owner (another user's run is a 404, as a missing one is)."""

from __future__ import annotations

from django.conf import settings
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from jobs.benchmarks.models import BenchmarkRun, Eval, EvalRun
from worker.benchmarks import SUITES, forgetting_warnings


def benchmark_list(*, owner, job_id=None) -> QuerySet[BenchmarkRun]:
    runs = BenchmarkRun.objects.filter(owner=owner).select_related("base_model", "job")
    return runs.filter(job_id=job_id) if job_id is not None else runs


def benchmark_get(*, owner, run_id) -> BenchmarkRun:
    return get_object_or_404(benchmark_list(owner=owner), id=run_id)


def benchmark_warnings(run: BenchmarkRun) -> list[str]:
    """The forgetting warnings of a finished run, at the server's margin (BENCHMARK_FORGET_MARGIN points)."""
    return forgetting_warnings(run.results or [], settings.BENCHMARK_FORGET_MARGIN)


def suite_list() -> list[dict]:
    """The built-in suites a user can pick, in the order shown."""
    return [
        {"name": s.name, "label": s.label, "general": s.general, "bundled": s.bundled, "tasks": list(s.tasks)}
        for s in SUITES.values()
    ]


def eval_list(*, owner) -> QuerySet[Eval]:
    return Eval.objects.filter(owner=owner)


def eval_find(*, owner, eval_id) -> Eval | None:
    """The owner's eval, or None (another user's is as missing)."""
    return eval_list(owner=owner).filter(id=eval_id).first() if eval_id else None


def eval_run_list(*, owner, evaluation: Eval) -> QuerySet[EvalRun]:
    return EvalRun.objects.filter(owner=owner, eval=evaluation)


def eval_run_find(*, owner, evaluation: Eval, run_id) -> EvalRun | None:
    return eval_run_list(owner=owner, evaluation=evaluation).filter(id=run_id).first() if run_id else None
