"""Sweeps (issue 27): the job form's Auto preset with a budget of N trials vs the default preset, and the pruner's
saving: the sweep's wall time vs the same trials each run to the end, one after the other.

    .venv/bin/python bench/sweep_auto.py [--trials 8] [--rows 160] [--threads 2] [--model DIR] [--quick]

A throwaway installation in a temp folder (SQLite, MEDIA_ROOT, its own redis-server, as `bench/submit_jobs.py`),
the demo model (`var/models/SmolLM2-135M-Instruct`, converted from the bundled GGUF when missing) registered as
the base, the demo dataset (`dataset_create_demo`; `--rows N`: its first N rows only) and one train worker: the
product's own `jobs.training.tasks.job_run`, in this process, claiming queued jobs one after the other. Nothing is
copied from the product: every arm goes through the services the pages use.

1. **default**: one job with the job form's defaults (TrainConfig's), validation split 10 % (seed 42).
2. **auto**: the Auto preset's sweep as `jobs.sweeps.views.sweep_auto` creates it (`AUTO_SPACE`, `sweep_create`'s
   defaults: TPE, successive halving, parallelism 2, seed 0, eval_loss), with `--trials` trials. The worker trains
   the trials as they are queued; each evaluation it reports goes to the pruner (`eval_recorded` ->
   `trial_prune_check`), each trial's end starts the next (`job_finished` -> `sweep_advance`), as in production.
3. **full**: the same trials' settings (as the sweep chose them), each as an ordinary job run to the end, one
   after the other (no pruner). A trial the sweep let finish is that same job (same settings and seed, so a rerun
   would repeat it); each pruned trial is rerun to its end. Its time: the sum of the jobs' runs (claim to end).

The held-out metric is the last validation loss (what the sweep ranks by) and the end-of-job evaluation's exact
match on the same validation rows (every arm splits the same rows off). Wall time counts the worker's runs,
end-of-job evaluations included, from the first job's creation to the last one's end. `--quick`: the tests' tiny
random model, the first 24 rows and 3 trials, to check the script end to end in seconds (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from submit_jobs import configure, start_redis  # noqa: E402

DEFAULT_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8, help="the Auto preset's budget in trials")
    p.add_argument("--rows", type=int, default=0, help="train on the demo dataset's first N rows only (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--quick", action="store_true", help="tiny random model, 24 rows, 3 trials: a smoke run")
    a = p.parse_args(argv)
    if a.quick:
        a.trials, a.rows = min(a.trials, 3), a.rows or 24
    return a


def demo_upload(folder: Path, rows: int) -> Path:
    """The demo dataset, or its first `rows` rows (the same rows for every arm)."""
    from jobs.datasets.services import DEMO_DATASET

    if not rows:
        return DEMO_DATASET
    path = folder / DEMO_DATASET.name
    path.write_text("".join(DEMO_DATASET.read_text().splitlines(keepends=True)[:rows]))
    return path


def fixtures(folder: Path, a: argparse.Namespace):
    """The bench's user, base model (the demo model, or the tests' tiny one with --quick) and dataset."""
    from django.contrib.auth import get_user_model
    from django.core.files import File

    from jobs.base_models.services import base_model_register
    from jobs.datasets.services import DEMO_DATASET_NAME, dataset_create, dataset_create_demo

    user = get_user_model().objects.create_user("bench", password="pw-bench-123")
    if a.quick:
        from tests.tiny_model import build_tiny_model

        base = base_model_register(name="tiny-llama", path=build_tiny_model(folder / "tiny-llama", "llama"))
    else:
        from worker.demo_model import convert_gguf_to_hf, find_demo_gguf, is_complete_model_dir

        model = Path(a.model)
        if not is_complete_model_dir(model):
            convert_gguf_to_hf(find_demo_gguf(), model)
        base = base_model_register(name="SmolLM2-135M-Instruct", path=model)
    if a.rows:
        with open(demo_upload(folder, a.rows), "rb") as fh:
            dataset = dataset_create(
                owner=user, upload=File(fh, name="demo.jsonl"), name=DEMO_DATASET_NAME, tokens_now=True
            )
    else:
        dataset = dataset_create_demo(owner=user)
    return user, base, dataset


def run_worker() -> float:
    """The train worker, in this process, until no job is queued; its wall time in seconds."""
    from jobs.training.models import FineTuneJob, JobStatus
    from jobs.training.tasks import job_run

    began = time.monotonic()
    while FineTuneJob.objects.filter(status=JobStatus.QUEUED).exists():
        job_run()
    return time.monotonic() - began


def one_job(user, base, dataset, config: dict[str, Any], name: str):
    """An ordinary job with `config` (validation split 10 %, seed 42, as the form's default), trained to its end."""
    from jobs.training import services as job_services
    from jobs.training.plan import job_plan
    from worker.config import TrainConfig

    began = time.monotonic()
    plan = job_plan(
        owner=user, dataset=dataset, base_model=base, config=TrainConfig.from_dict(config), validation="split"
    )
    job = job_services.job_create(plan=plan, name=name)
    run_worker()
    job.refresh_from_db()
    return job, time.monotonic() - began


def run_time(job) -> float:
    """A job's wall time from its claim to its end (setup, training, end-of-job evaluation)."""
    return (job.finished - job.started).total_seconds()


def stamp() -> str:
    return time.strftime("%H:%M:%S", time.gmtime())


def held_out(job) -> tuple[float | None, float | None]:
    """The job's last validation loss and its end-of-job exact match (None for a pruned job: no evaluation)."""
    from jobs.training.files import job_evaluation
    from jobs.training.models import MetricPoint

    point = MetricPoint.objects.filter(job=job, eval_loss__isnull=False).order_by("-step").first()
    evaluation = job_evaluation(job) if job.status == "succeeded" else None
    exact = ((evaluation or {}).get("rates") or {}).get("adapter", {}).get("exact")
    return (point.eval_loss if point else None), exact


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def settings_words(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def bench(a: argparse.Namespace) -> dict[str, Any]:
    from jobs.sweeps import services as sweep_services
    from jobs.sweeps.models import SweepTrial
    from jobs.sweeps.selectors import sweep_report
    from jobs.sweeps.views import AUTO_SPACE
    from jobs.training.models import FineTuneJob

    folder = Path(a.folder)
    user, base, dataset = fixtures(folder, a)
    print(f"data: {dataset.name}, {dataset.rows} rows; base {base.name}; {a.trials} trials", flush=True)

    default_job, default_s = one_job(user, base, dataset, {}, "default")
    default_s = run_time(default_job)
    print(f"{stamp()} default: {default_job.status}, {default_job.step} steps, {default_s:.0f} s", flush=True)

    # The Auto preset exactly as the job form's view makes it (jobs.sweeps.views.sweep_auto), with a trials budget.
    began = time.monotonic()
    sweep = sweep_services.sweep_create(
        owner=user, dataset=dataset, base_model=base, space=AUTO_SPACE, fixed={}, trials=a.trials, name="Auto"
    )
    run_worker()
    auto_s = time.monotonic() - began
    sweep.refresh_from_db()
    report = sweep_report(sweep)
    trials_s = sum(run_time(t.job) for t in sweep.trial_rows.select_related("job") if t.job is not None)
    print(f"{stamp()} auto: sweep {sweep.status} in {auto_s:.0f} s ({trials_s:.0f} s in its jobs' runs)", flush=True)

    rows = []
    full_s = 0.0
    for trial in sweep.trial_rows.order_by("number").select_related("job"):
        job = trial.job or FineTuneJob(step=0, total_steps=0)
        if trial.state == SweepTrial.State.COMPLETE:
            full = job  # it ran to its end in the sweep: the same job, its own run
        else:
            full, _ = one_job(user, base, dataset, trial.params, f"full · trial {trial.number}")
        seconds = run_time(full)
        full_s += seconds
        rows.append((trial, job, full, seconds))
        print(f"{stamp()} full trial {trial.number}: {full.status}, {full.step} steps, {seconds:.0f} s", flush=True)

    print()
    print("| trial | settings | sweep: state | steps | eval loss | full: steps | eval loss | exact | seconds |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for trial, job, full, seconds in rows:
        loss, exact = held_out(full)
        print(
            f"| {trial.number} | {settings_words(trial.params)} | {trial.state} | {job.step}/{job.total_steps} "
            f"| {fmt(trial.value)} | {full.step} | {fmt(loss)} | {fmt(exact, '.2f')} | {seconds:.0f} |"
        )
    default_loss, default_exact = held_out(default_job)
    best = report["best_trial"]
    best_trial = next((t for t, _, _, _ in rows if t.number == best), None)
    best_job = best_trial.job if best_trial is not None else None
    best_loss, best_exact = held_out(best_job) if best_job is not None else (None, None)
    pruned = [(t.number, j.step) for t, j, _, _ in rows if t.state == SweepTrial.State.PRUNED]
    print()
    print(f"default preset: eval loss {fmt(default_loss)}, exact match {fmt(default_exact, '.2f')}, {default_s:.0f} s")
    print(
        f"auto ({a.trials} trials), best trial {best} ({settings_words(best_trial.params if best_trial else {})}): "
        f"eval loss {fmt(best_loss)}, exact match {fmt(best_exact, '.2f')}"
    )
    print(
        f"wall time: sweep {auto_s:.0f} s vs the same {len(rows)} trials run to the end one after the other "
        f"{full_s:.0f} s: {auto_s / full_s:.2f}x ({1 - auto_s / full_s:.0%} saved); vs the default job "
        f"{auto_s / default_s:.1f}x"
    )
    print(f"pruned: {len(pruned)} of {len(rows)} trials" + "".join(f", #{n} at step {s}" for n, s in pruned))
    return {
        "default_loss": default_loss,
        "best_loss": best_loss,
        "auto_s": auto_s,
        "full_s": full_s,
        "pruned": pruned,
        "trials": len(rows),
        "status": sweep.status,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = arguments(argv)
    import os
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops redis and removes the folder

    os.environ["TRAIN_THREADS"] = str(a.threads)
    a.folder = tempfile.mkdtemp(prefix="bench-sweep-")
    redis_proc, port = start_redis(Path(a.folder))
    try:
        configure(Path(a.folder), port)
        from worker.modeling import quiet_transformers

        quiet_transformers()
        return bench(a)
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(a.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
