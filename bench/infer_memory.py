"""Inference memory: one base serving N adapters costs one base plus N small adapters, not N bases.

    .venv/bin/python bench/infer_memory.py [--adapters 5] [--rank 16] [--model DIR]

Loads the demo model (SmolLM2-135M-Instruct, converted from the bundled GGUF if the folder is
missing) into a `worker.inference.ModelPool` on the CPU (fp32), then loads N random LoRA adapters
on it one after the other (rank 16, alpha 32, q/k/v/o projections: the `TrainConfig` defaults,
1.84 M parameters; A and B random so each adapter changes the logits). After each stage it records
the pool's accounted memory (parameters + buffers at their dtype), the process's current RSS
(`VmRSS`) and peak RSS (`VmHWM`) from /proc/self/status, and the load time. The measuring runs
in a child process (this script re-invoked with `--measure`) that imports nothing else first, so
its RSS holds only the runtime, the pool and its models; the adapters are written beforehand by
the parent.

"N separate bases" is not loaded: it is N x the measured single base (accounted and RSS growth),
which is what a pool that loaded a base per adapter would hold at the least.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def measure(model_dir: str, adapter_dirs: list[str], budget_mb: int) -> dict:
    """Load the base, then the adapters one by one, recording memory after each; check the logits."""
    import peft  # noqa: F401  (imports counted before the "after imports" figure)
    import torch
    import transformers  # noqa: F401

    from worker.inference import MIB, ModelPool

    torch.set_num_threads(1)  # loading is memory traffic; one forward pass per stage needs no threads
    stages = [
        {"stage": "after imports", "accounted_mb": 0.0, "seconds": 0.0, **dict(zip(("rss_mb", "peak_mb"), rss_mb()))}
    ]
    pool = ModelPool(memory_budget_mb=budget_mb, device="cpu")

    def record(stage: str, started: float) -> None:
        current, peak = rss_mb()
        stages.append(
            {
                "stage": stage,
                "accounted_mb": pool.accounted_bytes / MIB,
                "rss_mb": current,
                "peak_mb": peak,
                "seconds": time.perf_counter() - started,
            }
        )

    started = time.perf_counter()
    ids = pool.base(model_dir).tokenizer("Which city is the capital of France?", return_tensors="pt").input_ids
    base_logits = pool.logits(model_dir, ids)
    record("base only", started)
    adapter_logits = []
    for i, folder in enumerate(adapter_dirs, 1):
        started = time.perf_counter()
        adapter_logits.append(pool.logits(model_dir, ids, adapter=(f"a{i}", folder)))
        if i in (1, len(adapter_dirs)):
            record(f"base + {i} adapter{'s' if i > 1 else ''}", started)
    # Switch back through every adapter and to the base: same logits as when each was loaded, no reload.
    for i, folder in enumerate(adapter_dirs, 1):
        assert torch.allclose(pool.logits(model_dir, ids, adapter=(f"a{i}", folder)), adapter_logits[i - 1], atol=1e-4)
    assert torch.allclose(pool.logits(model_dir, ids), base_logits, atol=1e-4)
    every = [base_logits] + adapter_logits
    assert not any(torch.allclose(x, y, atol=1e-3) for i, x in enumerate(every) for y in every[i + 1 :])
    stats = pool.stats()
    assert stats["base_loads"] == 1 and stats["adapter_loads"] == len(adapter_dirs), stats
    return {"stages": stages, "stats": stats}


def make_adapters(model_dir: Path, out: Path, n: int, rank: int) -> list[str]:
    from tests.tiny_model import build_random_adapter

    return [
        build_random_adapter(model_dir, out / f"a{i}", seed=100 + i, rank=rank, target_modules=TARGETS)
        for i in range(1, n + 1)
    ]


def report(result: dict, n: int) -> None:
    rows = result["stages"]
    imports, base, one, many = rows[0], rows[1], rows[2], rows[-1]
    print(f"{'stage':<18}{'accounted MB':>13}{'RSS MB':>9}{'RSS growth MB':>15}{'peak RSS MB':>13}{'load s':>8}")
    for r in rows:
        print(
            f"{r['stage']:<18}{r['accounted_mb']:>13.1f}{r['rss_mb']:>9.0f}{r['rss_mb'] - imports['rss_mb']:>15.0f}"
            f"{r['peak_mb']:>13.0f}{r['seconds']:>8.2f}"
        )
    base_acc, base_rss = base["accounted_mb"], base["rss_mb"] - imports["rss_mb"]
    print(
        f"{n} separate bases (estimated, {n} x the base; not loaded): accounted {n * base_acc:.0f} MB, "
        f"RSS growth {n * base_rss:.0f} MB"
    )
    for label, r in (("+1 adapter", one), (f"+{n} adapters", many)):
        acc, rss = r["accounted_mb"] - base_acc, r["rss_mb"] - base["rss_mb"]
        print(
            f"{label}: accounted +{acc:.1f} MB = {100 * acc / base_acc:.1f}% of one base; "
            f"RSS +{rss:.0f} MB = {100 * rss / base_rss:.1f}% of the base's RSS growth"
        )
    print(
        f"base + {n} adapters vs {n} bases: accounted {many['accounted_mb']:.0f} vs {n * base_acc:.0f} MB "
        f"({many['accounted_mb'] / (n * base_acc):.2f}x); RSS growth {many['rss_mb'] - imports['rss_mb']:.0f} vs "
        f"{n * base_rss:.0f} MB ({(many['rss_mb'] - imports['rss_mb']) / (n * base_rss):.2f}x)"
    )
    s = result["stats"]
    print(
        f"pool: base_loads {s['base_loads']}, adapter_loads {s['adapter_loads']}, evictions {s['evictions']}, "
        f"adapter sizes MB {sorted(set(s['bases'][0]['adapters'].values()))}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapters", type=int, default=5)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--budget-mb", type=int, default=8192)
    p.add_argument("--model", default=None, help="model folder (default: the demo model under var/models)")
    p.add_argument("--measure", nargs="+", metavar="DIR", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.adapters < 2:
        p.error("--adapters must be at least 2")
    sys.path.insert(0, str(ROOT))
    if a.measure:
        print("RESULT " + json.dumps(measure(a.model, a.measure, a.budget_mb)), flush=True)
        return 0

    from bench.train_throughput import DEFAULT_MODEL, ensure_model
    from worker.modeling import quiet_transformers

    quiet_transformers()
    model_dir = ensure_model(Path(a.model or DEFAULT_MODEL))
    if os.getloadavg()[0] > 1.5:
        print(f"warning: 1-min load average is {os.getloadavg()[0]:.2f}; load times will be noisy", flush=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(model_dir, Path(tmp), a.adapters, a.rank)
        cmd = [
            sys.executable,
            __file__,
            "--model",
            str(model_dir),
            "--budget-mb",
            str(a.budget_mb),
            "--adapters",
            str(a.adapters),
            "--measure",
            *adapters,
        ]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    line = next((row for row in done.stdout.splitlines() if row.startswith("RESULT ")), None)
    if done.returncode or line is None:
        print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
        return 1
    print(
        f"model {model_dir.name} (fp32, CPU), {a.adapters} random LoRA adapters rank {a.rank} on "
        f"{'/'.join(TARGETS)}, budget {a.budget_mb} MB"
    )
    report(json.loads(line[7:]), a.adapters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
