"""The background worker's benchmark run and the sweep that re-queues lost ones. The run takes an id, re-reads
the BenchmarkRun row and claims it (jobs.benchmarks.services): a memory check before anything is loaded
(MERGE_MEMORY_BUDGET_MB, as a merge), one copy of the base with the adapter through PEFT, each task on both
sides within BENCHMARK_SECONDS, a cancel read between model calls, the lease renewed as it goes, and the
results (or a plain reason) on the row and a line in the job's log."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from celery import shared_task
from django.conf import settings

from jobs.benchmarks import evals, services
from jobs.benchmarks.models import BenchmarkRun, EvalRun
from jobs.benchmarks.selectors import benchmark_warnings
from jobs.common import blobs, queue
from jobs.common.errors import failure_category
from jobs.common.shares import EXPORTS, JUDGEMENTS, owner_share
from jobs.training.files import job_files
from jobs.training.graders import grader_limits
from jobs.training.services import job_event
from worker import benchmarks
from worker.errors import StudioError

log = logging.getLogger(__name__)
MIB = 2**20
Status = BenchmarkRun.Status
RENEW_EVERY_S = 5.0


def benchmark_memory_need(run: BenchmarkRun) -> int:
    """Bytes the run holds at once: the base unquantized at its own dtype, and the adapter."""
    from worker.inference import estimate_adapter_bytes, estimate_base_bytes
    from worker.modeling import original_dtype

    path = run.base_model.local_path
    need = estimate_base_bytes(path, original_dtype(path))
    if run.job is not None:
        need += estimate_adapter_bytes(str(blobs.fetch(run.job.adapter.folder)))
    return need


def _end(run: BenchmarkRun, message: str, *, token: str | None = None, cancelled: bool = False) -> None:
    if services.benchmark_end(run, message, token=token, cancelled=cancelled) and run.job_id:
        job_event(job_id=run.job_id, kind="benchmark", message=message)


@shared_task(name=queue.BENCHMARK_RUN, acks_late=True, reject_on_worker_lost=True)
def benchmark_run(run_id: str) -> str:
    """Run one benchmark (see the module's words); returns what became of it."""
    run = (
        BenchmarkRun.objects.select_related("job__adapter", "base_model", "dataset")
        .filter(id=uuid.UUID(str(run_id)))
        .first()
    )
    if run is None or run.status not in services.PENDING:
        return "skipped"
    if run.attempts >= services.BENCHMARK_MAX_ATTEMPTS:
        _end(run, f"benchmark gave up after {services.BENCHMARK_MAX_ATTEMPTS} attempts (the worker stopped each time)")
        return "failed"
    token = None
    with owner_share(EXPORTS, run.owner_id):
        try:
            need, budget = benchmark_memory_need(run), settings.MERGE_MEMORY_BUDGET_MB * MIB
            if need > budget:
                _end(
                    run,
                    f"benchmark refused: it needs about {need / MIB:,.1f} MB (the base unquantized and the "
                    f"adapter), more than MERGE_MEMORY_BUDGET_MB ({settings.MERGE_MEMORY_BUDGET_MB:,} MB)",
                )
                return "refused"
            token = services.benchmark_claim(run)
            if token is None:
                return "in progress"
            return _run_claimed(run, token)
        except Exception as exc:
            log.exception("benchmark %s failed", run.id)
            reason = exc.message if isinstance(exc, StudioError) else failure_category(exc)
            _end(run, f"benchmark failed: {reason}", token=token)
            return "failed"


class _Watch:
    """The run's `should_stop`: True once cancelled, once its claim is gone, or past BENCHMARK_SECONDS; renews
    the lease (with the stage) every few seconds, so the sweep can tell a live run from a dead one."""

    def __init__(self, run: BenchmarkRun, token: str):
        self.run, self.token = run, token
        self.deadline = time.monotonic() + settings.BENCHMARK_SECONDS
        self.stage, self.fraction, self.last, self.stopped = "loading the model", 0.0, 0.0, ""

    def progress(self, stage: str, fraction: float) -> None:
        self.stage, self.fraction = stage, fraction
        self.renew(force=True)

    def renew(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= RENEW_EVERY_S:
            self.last = now
            if not services.benchmark_progress(self.run, self.token, stage=self.stage, progress=self.fraction):
                self.stopped = self.stopped or "cancelled"

    def __call__(self) -> bool:
        if time.monotonic() > self.deadline:
            self.stopped = "time"
        self.renew()
        return bool(self.stopped)


def _run_claimed(run: BenchmarkRun, token: str) -> str:
    watch = _Watch(run, token)
    watch.progress("loading the model", 0.0)
    adapter = str(blobs.fetch(run.job.adapter.folder)) if run.job is not None else None
    model, tokenizer = benchmarks.load_benchmark_model(run.base_model.local_path, adapter)
    scratch = Path(tempfile.mkdtemp(prefix=f"benchmark-{run.id}-"))
    try:
        tasks = benchmarks.suite_tasks(run.suites, scratch, run.limit)
        scorer = None
        if run.dataset_name:
            task, scorer = _dataset_task(run, tokenizer, scratch)
            tasks.append(task)
        try:
            results = benchmarks.run_benchmark(
                model, tokenizer, tasks, limit=run.limit, should_stop=watch, progress=watch.progress
            )
        finally:
            if scorer is not None:
                scorer.close()
    except benchmarks.BenchmarkStopped:
        if watch.stopped == "time":
            _end(run, f"benchmark stopped: it ran past BENCHMARK_SECONDS ({settings.BENCHMARK_SECONDS} s)", token=token)
            return "failed"
        services.benchmark_end(run, "cancelled", token=token, cancelled=True)
        return "cancelled"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = [r.as_json() for r in results]
    if not services.benchmark_finish(run, token, results=rows):
        return "lost"
    run.refresh_from_db()
    if run.job_id:
        job_event(job_id=run.job_id, kind="benchmark", message=_summary(run))
    return "ready"


def _dataset_task(run: BenchmarkRun, tokenizer, scratch: Path):
    """The task of the user's rows, and the grader's scorer to close after (None but for grader scoring)."""
    from worker.graders.scoring import Scorer
    from worker.graders.spec import parse_grader

    if run.held_out:
        assert run.job is not None, "held_out is for a job's run"
        path = blobs.fetch(job_files(run.job, "data/eval.jsonl"))
    elif run.dataset is not None:
        path = blobs.fetch(run.dataset.normalized_file)
    else:
        raise StudioError("the dataset of this benchmark has been deleted", field="dataset")
    rows = benchmarks.file_rows(path, tokenizer, run.limit)
    scorer = None
    if run.scoring == "grader":
        assert run.job is not None and run.job.grader, "grader scoring was checked at request"
        scorer = Scorer(parse_grader(run.job.grader), limits=grader_limits())
    grade = (lambda answer, item: scorer.grade(answer, item).reward) if scorer is not None else None
    task = benchmarks.dataset_task("your_dataset", rows, scratch, scoring=run.scoring, grade=grade)
    return task, scorer


def _summary(run: BenchmarkRun) -> str:
    ran = [r for r in run.results if not r.get("unavailable")]
    text = f"benchmark ready: {len(ran)} task(s)"
    missing = len(run.results) - len(ran)
    if missing:
        text += f", {missing} unavailable offline"
    warnings = benchmark_warnings(run)
    return text + ("; warning: " + " ".join(warnings) if warnings else "")


@shared_task(name=queue.SWEEP_BENCHMARKS, acks_late=True)
def benchmark_sweep() -> int:
    """Queue again the runs whose lease ran out (message lost, or worker died); past BENCHMARK_MAX_ATTEMPTS a run
    gives up. Re-queueing renews the lease, so a second sweep at once does nothing."""
    return services.LEASED.requeue_stale(
        services.benchmarks_stale(),
        send=lambda run: queue.send(queue.BENCHMARK_RUN, str(run.id)),
        give_up=lambda run: _end(
            run, f"benchmark gave up after {services.BENCHMARK_MAX_ATTEMPTS} attempts (its work was lost)"
        ),
    )


@shared_task(name=queue.EVAL_RUN, acks_late=True, reject_on_worker_lost=True)
def eval_run(run_id: str) -> str:
    """Run an eval run (jobs.benchmarks.evals) under its claim, its lease kept by a heartbeat; a run that fails
    says why on the row."""
    row = EvalRun.objects.select_related("owner", "eval").filter(id=run_id).first()
    if row is None or row.status not in evals.PENDING:
        return "skipped"
    share = owner_share(JUDGEMENTS, row.owner_id)
    return evals.LEASED.work_claimed(row, evals.eval_run_work, share=share, what="eval run", failed_as="run")


@shared_task(name=queue.SWEEP_EVALS, acks_late=True)
def eval_sweep() -> int:
    """Queue again the eval runs whose lease ran out, counting an attempt for a lost message; past MAX_ATTEMPTS
    one gives up. Returns how many."""
    return evals.LEASED.requeue_stale(
        evals.eval_runs_stale(),
        send=lambda row: queue.send(queue.EVAL_RUN, str(row.id)),
        give_up=lambda row: evals.eval_run_fail(
            row, f"gave up after {evals.MAX_ATTEMPTS} attempts (its work was lost each time)"
        ),
    )
