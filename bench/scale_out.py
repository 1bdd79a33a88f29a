"""Scale-out on one machine: one job on 1 vs 2 processes, and jobs/hour with 1 vs 2 workers.

    .venv/bin/python bench/scale_out.py [--model DIR] [--steps 8] [--jobs 4] [--job-steps 3] [--threads 2]

1. **One job, 1 vs 2 processes** (`devices` 1 and 2, through `worker.distributed.run_training`,
   the launcher the train worker uses): the same job (demo data, batch 8, max length 256, TrainConfig
   defaults otherwise, dropout 0 so both compute the same thing) for `--steps` optimizer steps.
   tokens/s is the median of the engine's per-step `tokens_per_s` (non-padding tokens of the global
   batch over rank 0's wall time for the step, all-reduce included), step 1 (warm-up) left out.
   One process gets `--threads` torch threads; each of the two gets half (they share the cores).
2. **Jobs per hour, 1 vs 2 workers**: a queue of `--jobs` small identical jobs (`--job-steps` steps
   each, checkpoints off, no evaluation) shared out round-robin to W long-lived worker processes
   (this script re-invoked with `--worker`), each training its jobs one after another with
   `worker.engine.train` and `--threads / W` torch threads. This is the engine in subprocesses, not
   Celery: no broker, database or claim, so it measures training capacity, not dispatch. jobs/hour =
   jobs / wall time from starting the workers to the last one ending (imports and model loads included,
   as when train workers start).

On a 2-core CPU machine little or no gain is expected from either (the processes share two cores);
the figures prove the paths run. `bench/gpu_check.sh` measures DDP on 2 GPUs where there are 2.
The 1-min load average is printed before each part so a contended run shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
DATA = ROOT / "worker" / "demo_data" / "demo_dataset.jsonl"


def ensure_model(model_dir: Path) -> Path:
    from worker.demo_model import convert_gguf_to_hf, find_demo_gguf, is_complete_model_dir

    if not is_complete_model_dir(model_dir):
        print(f"converting the demo model into {model_dir} ...", flush=True)
        convert_gguf_to_hf(find_demo_gguf(), model_dir)
    return model_dir


def job_spec(model: Path, out: Path, *, steps: int, devices: int = 1):
    from worker.config import TrainConfig, TrainSpec

    config = TrainConfig(
        max_steps=steps,
        devices=devices,
        dropout=0.0,
        warmup_ratio=0.0,
        save_every=10_000_000,
        final_eval=False,
        seed=42,
    )
    return TrainSpec(str(model), str(DATA), str(out), config, device="cpu")


def one_job(model: Path, devices: int, steps: int, threads: int) -> dict:
    import torch

    from worker.distributed import run_training
    from worker.reporting import MemoryReporter

    torch.set_num_threads(threads)
    reporter = MemoryReporter()
    with tempfile.TemporaryDirectory() as out:
        started = time.monotonic()
        run_training(job_spec(model, Path(out), steps=steps, devices=devices), reporter, threads=threads)
        wall = time.monotonic() - started
    rates = [m["tokens_per_s"] for step, m in reporter.points if step > 1]
    return {
        "devices": devices,
        "tokens_per_s": statistics.median(rates),
        "wall_s": wall,
        "final_loss": reporter.points[-1][1]["loss"],
    }


def worker(model: Path, jobs: list[str], steps: int, threads: int) -> None:
    """One long-lived worker process: train its share of the queue, one job after another."""
    import torch

    from worker.engine import train
    from worker.reporting import MemoryReporter

    torch.set_num_threads(threads)
    for out in jobs:
        train(job_spec(model, Path(out), steps=steps), MemoryReporter())


def jobs_per_hour(model: Path, workers: int, jobs: int, steps: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        outs = [str(Path(tmp) / f"job{i}") for i in range(jobs)]
        shares = [outs[w::workers] for w in range(workers)]
        per_worker = max(1, threads // workers)
        env = {**os.environ, "OMP_NUM_THREADS": str(per_worker)}
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--model",
                    str(model),
                    "--job-steps",
                    str(steps),
                    "--threads",
                    str(per_worker),
                    *share,
                ],
                env=env,
            )
            for share in shares
        ]
        codes = [p.wait() for p in procs]
        wall = time.monotonic() - started
    if any(codes):
        raise SystemExit(f"a worker failed: exit codes {codes}")
    return {"workers": workers, "jobs": jobs, "wall_s": wall, "jobs_per_hour": jobs / wall * 3600}


def load() -> float:
    return os.getloadavg()[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--steps", type=int, default=8, help="optimizer steps of the one-job comparison")
    p.add_argument("--jobs", type=int, default=4, help="small jobs in the queue")
    p.add_argument("--job-steps", type=int, default=3, help="optimizer steps of each small job")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("outs", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(Path(args.model), args.outs, args.job_steps, args.threads)
        return 0
    import logging

    logging.basicConfig(level=logging.WARNING)
    model = ensure_model(Path(args.model))
    print(f"model {model.name}, {os.cpu_count()} cores, --threads {args.threads}", flush=True)

    print(f"\n1. one job, {args.steps} steps, batch 8 (1-min load {load():.2f})", flush=True)
    runs = [one_job(model, devices, args.steps, args.threads) for devices in (1, 2)]
    for r in runs:
        print(
            f"   devices={r['devices']}: {r['tokens_per_s']:7.1f} tokens/s  wall {r['wall_s']:6.1f} s  "
            f"final loss {r['final_loss']:.4f}",
            flush=True,
        )
    ratio = runs[1]["tokens_per_s"] / runs[0]["tokens_per_s"]
    print(f"   2 processes / 1 process: {ratio:.2f}x tokens/s", flush=True)

    print(f"\n2. a queue of {args.jobs} jobs of {args.job_steps} steps (1-min load {load():.2f})", flush=True)
    queues = [jobs_per_hour(model, w, args.jobs, args.job_steps, args.threads) for w in (1, 2)]
    for q in queues:
        print(f"   workers={q['workers']}: {q['jobs_per_hour']:7.1f} jobs/hour  wall {q['wall_s']:6.1f} s", flush=True)
    scale = queues[1]["jobs_per_hour"] / queues[0]["jobs_per_hour"]
    print(f"   2 workers / 1 worker: {scale:.2f}x jobs/hour", flush=True)
    print(
        json.dumps(
            {
                "one_job": runs,
                "tokens_per_s_ratio": ratio,
                "queue": queues,
                "jobs_per_hour_ratio": scale,
                "load_at_end": load(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
