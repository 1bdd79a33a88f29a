"""How long submitting a job over REST takes: 20 `POST /api/v1/jobs/` in a throwaway installation, p50 / p95.

    .venv/bin/python bench/submit_jobs.py [--jobs 20] [--warmup 2] [--profile]

The installation is built in a temp folder and removed at the end: SQLite, MEDIA_ROOT and VAR_DIR there,
its own redis-server on a free port (the broker, the cache and the live workers' announcements), the tiny
llama model of the tests as the base model and the tests' chat dataset. No Celery worker consumes the
train queue and eager mode is off, so every job stays queued: nothing trains; the script checks it.
`--warmup` requests (not counted) go first, as a running server has served some before. `--profile`
prints cProfile's top functions over the measured requests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(folder: Path) -> tuple[subprocess.Popen, int]:
    """A private redis-server (no persistence) on a free port; waits until it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def configure(folder: Path, redis_port: int) -> None:
    """The installation's settings through the environment, as the product reads them; then Django."""
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "webapp.settings",
            "LORA_STUDIO_VAR": str(folder / "var"),
            "MEDIA_ROOT": str(folder / "media"),
            "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "SECRET_KEY": "bench-only-" + "x" * 40,
            "QUOTA_ACTIVE_JOBS": "1000",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def fixtures(folder: Path):
    """A user with an API key client, the tiny base model and a chat dataset (its tokens counted)."""
    from django.contrib.auth import get_user_model
    from django.core.files.uploadedfile import SimpleUploadedFile

    from jobs.base_models.services import base_model_register
    from jobs.datasets.services import dataset_create
    from jobs.datasets.token_profiles import dataset_token_report
    from tests.factories import bearer_client, chat_jsonl
    from tests.tiny_model import build_tiny_model

    user = get_user_model().objects.create_user("bench", password="pw-bench-123")
    base = base_model_register(name="tiny-llama", path=build_tiny_model(folder / "tiny-llama", "llama"))
    dataset = dataset_create(owner=user, upload=SimpleUploadedFile("colours.jsonl", chat_jsonl()), name="colours.jsonl")
    dataset_token_report(dataset=dataset, model_path=base.path, max_length=512)  # as after an upload
    return bearer_client(user), dataset, base


def submit(client, dataset, base, i: int) -> float:
    """One job submission; its wall time in ms (a non-201 answer stops the bench)."""
    body = {
        "name": f"bench {i}",
        "dataset": str(dataset.id),
        "base_model": str(base.id),
        "config": {"rank": 8, "epochs": 1, "max_seq_length": 256},
        "validation": "split",
    }
    start = time.perf_counter()
    response = client.post("/api/v1/jobs/", body, format="json")
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 201:
        raise SystemExit(f"submission {i} answered {response.status_code}: {response.content[:500]!r}")
    return elapsed


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    redis_proc, port = start_redis(folder)
    try:
        configure(folder, port)
        client, dataset, base = fixtures(folder)
        for i in range(a.warmup):
            submit(client, dataset, base, -1 - i)
        profiler = None
        if a.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        times = [submit(client, dataset, base, i) for i in range(a.jobs)]
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(
                int(os.environ.get("BENCH_PROFILE_LINES", "40"))
            )
        from jobs.training.models import FineTuneJob, JobStatus

        statuses = set(FineTuneJob.objects.values_list("status", flat=True))
        if statuses != {JobStatus.QUEUED}:
            raise SystemExit(f"jobs left the queue (something trained them): {statuses}")
        print(
            f"{a.jobs} job submissions over REST: p50 {percentile(times, 50):.1f} ms, "
            f"p95 {percentile(times, 95):.1f} ms, max {max(times):.1f} ms "
            f"(after {a.warmup} warm-up; every job still queued)"
        )
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
