"""Chaos run: jobs train on a real stack (web, train, infer, background workers, beat, Redis) while
processes are killed with SIGKILL at random moments and started again; at the end it prints how many
jobs finished and how many metric steps were lost or duplicated (target: all finished, 0, 0).

    .venv/bin/python bench/chaos.py --minutes 3 --seed 1

It uses the tiny random Llama the tests build (no download) and the tests' process launcher.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import memorisable_conversations  # noqa: E402
from tests.integration.stack import Stack  # noqa: E402
from tests.integration.test_resume import Api  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402

VICTIMS = ["train", "train", "background", "beat", "redis", "infer", "web"]  # training is hit most
CONFIG = {
    "rank": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_preset": "all_linear",
    "learning_rate": 0.01,
    "batch_size": 4,
    "max_seq_length": 128,
    "warmup_ratio": 0.0,
    "seed": 3,
    "max_steps": 40,
    "save_every": 5,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long processes are killed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=2, help="jobs kept queued or running meanwhile")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="lora-chaos-"))
    stack = Stack(tmp, database="sqlite", redis="embedded", model_dir=build_tiny_model(tmp / "model", "llama"))
    stack.env.update(JOB_LEASE_SECONDS="6", SWEEP_SECONDS="1", SESSION_THROTTLE_RATE="100000/min")
    stack.start()
    jobs: list[str] = []
    kills: dict[str, int] = {}
    try:
        api = Api(stack)
        data = "".join(json.dumps({"messages": m}) + "\n" for m in memorisable_conversations(16)).encode()
        dataset = api.post("/datasets/", files={"file": ("colours.jsonl", data)}, data={"name": "colours"})["id"]
        base = next(m["id"] for m in api.get("/base-models/").json() if m["name"] == "tiny-llama")
        end = time.monotonic() + args.minutes * 60
        next_kill = time.monotonic() + rng.uniform(2, 8)
        while time.monotonic() < end:
            try:
                unfinished = [
                    j
                    for j in jobs[-args.in_flight * 2 :]
                    if api.get(f"/jobs/{j}/").json()["status"] in ("queued", "running")
                ]
                while len(unfinished) < args.in_flight:
                    unfinished.append(
                        api.post(
                            "/jobs/",
                            json={
                                "name": "chaos",
                                "dataset": dataset,
                                "base_model": base,
                                "config": CONFIG,
                                "validation": "none",
                            },
                        )["id"]
                    )
                    jobs.append(unfinished[-1])
            except Exception as exc:  # noqa: BLE001 (the web server or Redis may be down this second)
                print(f"  (api unavailable: {type(exc).__name__})", flush=True)
            if time.monotonic() >= next_kill:
                victim = rng.choice(VICTIMS)
                stack.kill(victim)
                kills[victim] = kills.get(victim, 0) + 1
                time.sleep(rng.uniform(0, 3))
                stack.respawn(victim)
                if victim == "web":
                    stack._wait_http()
                    api = Api(stack)
                next_kill = time.monotonic() + rng.uniform(2, 8)
            time.sleep(0.5)
        print(f"killed: {kills}; waiting for {len(jobs)} jobs to end", flush=True)
        finished = lost = duplicated = 0
        for job_id in jobs:
            try:
                api.wait_done(stack, job_id, limit_s=300)
                finished += 1
            except (AssertionError, TimeoutError) as exc:
                print(f"  job {job_id} did not succeed: {str(exc)[:200]}", flush=True)
            steps = [p["step"] for p in api.metrics_after(job_id, 0)]
            total = api.get(f"/jobs/{job_id}/").json()["total_steps"] or CONFIG["max_steps"]
            lost += len(set(range(1, total + 1)) - set(steps))
            duplicated += len(steps) - len(set(steps))
        print(f"jobs finished: {finished}/{len(jobs)}; steps lost: {lost}; steps duplicated: {duplicated}")
        return 0 if finished == len(jobs) and lost == duplicated == 0 else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
