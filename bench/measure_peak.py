"""Peak resident memory of a few training steps of one configuration, in a fresh process.

    python -m bench.measure_peak MODEL_DIR DATA.jsonl OUT_DIR '{"qlora": true, ...}'

Prints one JSON line: {"peak_mb": VmHWM in MiB, "seconds": ...}. The slow test of the estimate
(tests/slow/test_estimate_calibration.py) runs it once per configuration: a fresh process, so the
high-water mark is this job's alone.
"""

from __future__ import annotations

import json
import sys
import time


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv: list[str]) -> None:
    model_dir, data, out, overrides = argv
    from worker.config import TrainConfig, TrainSpec
    from worker.engine import train
    from worker.reporting import MemoryReporter

    cfg = TrainConfig(**json.loads(overrides))
    started = time.monotonic()
    reporter = MemoryReporter()
    train(TrainSpec(model_dir, data, out, cfg, device="cpu"), reporter)
    rates = [m["tokens_per_s"] for _, m in reporter.points if m.get("tokens_per_s")]
    print(
        json.dumps(
            {
                "peak_mb": peak_rss_mb(),
                "seconds": time.monotonic() - started,
                "tokens_per_s": rates[-1] if rates else None,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
