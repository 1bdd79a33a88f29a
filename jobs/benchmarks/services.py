"""Writes of benchmark runs: ask for one (a job's base vs adapted, or a base model alone), cancel it, and the
claim a background run holds while it works (a token and a lease on the database's clock, as exports do:
jobs.training.exports). Every write of a run is fenced by its token, so a run that lost its claim writes
nothing; a lease that ran out means the message was lost or the worker died, and the sweep queues it again."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now

from jobs.benchmarks.models import BenchmarkRun
from jobs.common import queue
from jobs.common.exceptions import StateError
from jobs.common.leased import LeasedRows
from jobs.datasets.selectors import dataset_find
from jobs.training.graders import grader_parts
from jobs.training.models import FineTuneJob
from worker.benchmarks import MAX_LIMIT, SCORINGS, SUITES
from worker.errors import InputError
from worker.graders.spec import LabelModel, ScoreModel, parse_grader

Status = BenchmarkRun.Status
PENDING = (Status.QUEUED, Status.RUNNING)
BENCHMARK_MAX_ATTEMPTS = 3
# A run being cancelled is not taken again, and its progress writes stop (its run ends at the next model call).
LEASED = LeasedRows(
    BenchmarkRun,
    lambda: settings.MERGE_STALE_SECONDS,
    max_attempts=BENCHMARK_MAX_ATTEMPTS,
    takeable=Q(cancel_requested=False),
)
HELD_OUT = "held-out"  # the `dataset` that names the job's own held-out split


def _suites_checked(suites: object) -> list[str]:
    if not isinstance(suites, list) or not all(isinstance(s, str) for s in suites):
        raise InputError("suites", "must be a list of suite names")
    for i, name in enumerate(suites):
        if name not in SUITES:
            raise InputError(f"suites.{i}", f"unknown suite {name!r}; the suites are {', '.join(SUITES)}")
    return list(dict.fromkeys(suites))


def _scoring_checked(scoring: str, job: FineTuneJob | None) -> str:
    if scoring not in SCORINGS:
        raise InputError("scoring", f"must be one of {', '.join(SCORINGS)}")
    if scoring == "grader":
        if job is None or not job.grader:
            raise InputError("scoring", "grader scoring uses the job's grader; this job has none")
        if any(isinstance(p, (ScoreModel, LabelModel)) for _path, p in grader_parts(parse_grader(job.grader))):
            raise InputError("scoring", "a grader with a judge model cannot score benchmarks yet; use contains")
    return scoring


def benchmark_request(
    *,
    owner,
    base_model,
    job: FineTuneJob | None = None,
    suites: object = (),
    dataset: str | None = None,
    scoring: str = "exact_match",
    limit: int | None = None,
) -> BenchmarkRun:
    """Queue a benchmark run of `suites` (built-in suite names) and, with `dataset` (one of the owner's datasets,
    or "held-out": the job's held-out split), a task of the user's rows scored by `scoring`; on the job's base
    and adapted model, or on `base_model` alone. InputError naming the field for what cannot be run."""
    if job is not None and not job.has_adapter:
        raise StateError("only a job that succeeded with its adapter stored can be benchmarked", field="job")
    names = _suites_checked(list(suites) if isinstance(suites, tuple) else suites)
    limit = 50 if limit is None else limit
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InputError("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    found, held_out, name = None, False, ""
    if dataset == HELD_OUT:
        if job is None or not (job.validation or {}).get("eval_rows"):
            raise InputError("dataset", "held-out names a job's held-out split; this job has none")
        held_out, name = True, f"{job.dataset_name} (held out)"
    elif dataset:
        found = dataset_find(owner=owner, dataset_id=dataset)
        if found is None:
            raise InputError("dataset", "no dataset of yours has this id")
        if found.schema == "text":
            raise InputError("dataset", "a dataset of plain texts has no answers to compare with; choose a chat one")
        name = found.name
    if not names and not name:
        raise InputError("suites", "choose at least one suite, or a dataset of yours to benchmark on")
    with transaction.atomic():
        run = BenchmarkRun.objects.create(
            owner=owner,
            job=job,
            base_model=base_model,
            suites=names,
            dataset=found,
            held_out=held_out,
            dataset_name=name,
            scoring=_scoring_checked(scoring, job) if name else "",
            limit=limit,
            lease_until=LEASED.lease(),
        )
        queue.enqueue(queue.BENCHMARK_RUN, str(run.id), robust=True)
    run.refresh_from_db()
    return run


def benchmark_cancel(*, run: BenchmarkRun, by) -> BenchmarkRun:
    """Cancel a pending run: a queued one at once, a running one at its next model call."""
    if run.status not in PENDING:
        raise StateError(f"this benchmark is {run.status}; only a queued or running one can be cancelled")
    BenchmarkRun.objects.filter(id=run.id, status=Status.QUEUED).update(
        status=Status.CANCELLED, cancel_requested=True, lease_until=None, finished=Now()
    )
    BenchmarkRun.objects.filter(id=run.id, status=Status.RUNNING).update(cancel_requested=True)
    run.refresh_from_db()
    return run


def benchmark_after_job(job: FineTuneJob) -> BenchmarkRun | None:
    """The server's automatic run after a job (BENCHMARK_AFTER_JOB suites), when it succeeded with an adapter."""
    suites = [s for s in settings.BENCHMARK_AFTER_JOB if s in SUITES]
    if not suites or not job.has_adapter:
        return None
    return benchmark_request(owner=job.owner, base_model=job.base_model, job=job, suites=suites)


# --- the claim of a background run --------------------------------------------------------------------------


def benchmark_claim(run: BenchmarkRun) -> str | None:
    """Take the run (queued, or running on a worker whose lease ran out), counting an attempt; the token, or
    None when another run holds it or nothing is pending."""
    return LEASED.claim(run.id)


def benchmark_progress(run: BenchmarkRun, token: str, *, stage: str, progress: float) -> bool:
    """Record what the run is doing and renew its lease; False once its claim is gone or it was cancelled."""
    rows = LEASED.held(run.id, token).filter(cancel_requested=False)
    return rows.update(stage=stage[:100], progress=max(0.0, min(1.0, progress)), lease_until=LEASED.lease()) == 1


def benchmark_finish(run: BenchmarkRun, token: str, *, results: list[dict]) -> bool:
    """Store the results: the run is ready (only for the run that holds the claim)."""
    return LEASED.finish(run.id, token, Status.READY, results=results, stage="", progress=1.0)


def benchmark_end(run: BenchmarkRun, message: str, *, token: str | None = None, cancelled: bool = False) -> bool:
    """End a pending run as failed with `message` (or cancelled), fenced by `token` when a run holds it."""
    return LEASED.end(run.id, message, token=token, status=Status.CANCELLED if cancelled else Status.FAILED)


def benchmarks_stale() -> list[BenchmarkRun]:
    """Pending runs whose lease ran out: the message was lost, or the worker died mid-run."""
    return list(LEASED.stale())


def benchmark_requeue(run: BenchmarkRun, attempts: int) -> bool:
    """Queue a stale run again with `attempts` and a fresh lease, unless someone changed it meanwhile."""
    return LEASED.requeue(run, attempts)
