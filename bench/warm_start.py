"""Warm start: how long a job takes from submission to its first step, with the base loaded or kept loaded.

Runs jobs on the demo model in this one process, as the train worker does (torch and transformers
imported once): each round a cold job (a fresh `WarmBases`, so the base is loaded from its folder)
then a warm one on the same base (kept loaded by `WarmBases` between the two). The clock starts
as `train` is called (the worker has claimed the job) and stops as step 1 starts (the job is then
cancelled: the step is the same work either way); the part to the "LoRA on ..." event (tokenizer,
data, base, LoRA layers) is shown too. The cold load reads from the OS page cache after the first
round, so it is the cheapest cold load there is: the ratio is a floor. Prints the medians and the cold / warm ratio.

    python bench/warm_start.py [--rounds 3] [--model var/models/SmolLM2-135M-Instruct]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
DATA = ROOT / "worker" / "demo_data" / "demo_dataset.jsonl"


def timed_job(model_dir: str, warm) -> dict:
    """Seconds from `train` to the base being ready and to step 1 starting, and whether the start was warm.

    The job is cancelled at its first stop check, made right before step 1: the step itself is the
    same work either way, and on a busy machine its noise would drown the difference.
    """
    from worker.config import TrainConfig, TrainSpec
    from worker.engine import train
    from worker.reporting import MemoryReporter

    class Clock(MemoryReporter):
        def __init__(self):
            super().__init__()
            self.started = time.perf_counter()
            self.setup_s = self.first_step_s = None

        def event(self, kind, message):
            if kind == "setup" and message.startswith("LoRA on") and self.setup_s is None:
                self.setup_s = time.perf_counter() - self.started
            super().event(kind, message)

        def first_step(self):
            if self.first_step_s is None:
                self.first_step_s = time.perf_counter() - self.started
            return "cancel"

    cfg = TrainConfig(max_steps=1, batch_size=4, warmup_ratio=0.0, save_every=10_000_000, seed=42)
    with tempfile.TemporaryDirectory() as out:
        clock = Clock()
        result = train(TrainSpec(model_dir, str(DATA), out, cfg, device="cpu"), clock, clock.first_step, warm=warm)
    assert result.status == "cancelled" and result.steps_done == 0
    warm_start = any("warm start" in message for _, message in clock.events)
    return {"setup_s": clock.setup_s, "first_step_s": clock.first_step_s, "warm": warm_start}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from bench.train_throughput import ensure_model
    from worker.modeling import quiet_transformers
    from worker.warm import WarmBases

    quiet_transformers()
    model_dir = str(ensure_model(Path(a.model)))
    cold, warm = [], []
    for round_no in range(a.rounds):
        bases = WarmBases(budget_mb=8192)
        c, w = timed_job(model_dir, bases), timed_job(model_dir, bases)
        assert not c["warm"] and w["warm"], (c, w)
        cold.append(c)
        warm.append(w)
        print(
            f"round {round_no + 1}: cold {c['first_step_s']:.2f} s (setup {c['setup_s']:.2f} s), "
            f"warm {w['first_step_s']:.2f} s (setup {w['setup_s']:.2f} s)",
            flush=True,
        )
    med = {
        name: {key: statistics.median(r[key] for r in runs) for key in ("setup_s", "first_step_s")}
        for name, runs in (("cold", cold), ("warm", warm))
    }
    print(
        f"submitted -> first step: cold {med['cold']['first_step_s']:.2f} s, warm {med['warm']['first_step_s']:.2f} s, "
        f"ratio {med['cold']['first_step_s'] / med['warm']['first_step_s']:.2f}x"
    )
    print(
        f"setup (tokenizer, data, base, LoRA): cold {med['cold']['setup_s']:.2f} s, warm {med['warm']['setup_s']:.2f} s, "
        f"ratio {med['cold']['setup_s'] / med['warm']['setup_s']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
