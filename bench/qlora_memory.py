"""QLoRA vs 16-bit LoRA on CPU: peak resident memory of a whole job, each in its own process.

Each variant trains a short job (`worker.engine.train`, demo model and data, checkpoints off) in a
fresh child process, which reports its peak RSS (model loading included) as the kernel's high-water
mark of its own memory, VmHWM in /proc/self/status. Not getrusage's ru_maxrss: Linux carries the
parent's high-water mark across fork and exec into it, so a child of a big process (a test run that
built a model, say) would report at least the parent's size. Variants, each through the job's `precision`
setting (explicit, so the figures do not depend on what `auto` picks on this CPU): `lora-fp32`, `lora-bf16`
(16-bit LoRA: the base stored in bf16) and `qlora` (the base in 4-bit NF4 computing in bf16). Prints each
peak and the QLoRA / 16-bit ratio.

    python bench/qlora_memory.py [--steps 2] [--model var/models/SmolLM2-135M-Instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
DATA = ROOT / "worker" / "demo_data" / "demo_dataset.jsonl"
VARIANTS = {"lora-fp32": ("fp32", False), "lora-bf16": ("bf16", False), "qlora": ("bf16", True)}


def child(model_dir: str, data: str, variant: str, steps: int, batch_size: int) -> None:
    """Train one short job in this process at the variant's precision and quantization."""
    import torch

    import worker.engine as engine
    from worker.config import TrainConfig, TrainSpec
    from worker.reporting import MemoryReporter

    torch.set_num_threads(1)
    precision, qlora = VARIANTS[variant]
    cfg = TrainConfig(
        qlora=qlora,
        precision=precision,
        max_steps=steps,
        batch_size=batch_size,
        save_every=10_000_000,
        warmup_ratio=0.0,
        final_eval=False,
    )
    with tempfile.TemporaryDirectory() as out:
        result = engine.train(TrainSpec(model_dir, data, out, cfg, device="cpu"), MemoryReporter())
    assert result.status == "succeeded", result
    assert result.precision == precision, (variant, result.precision)
    print(f"PEAK_KB {own_peak_kb()}", flush=True)


def own_peak_kb() -> int:
    """This process's peak resident memory since exec, in KiB (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def job_peak_rss_mb(
    model_dir: str, variant: str, *, steps: int = 2, batch_size: int = 4, data: str = str(DATA)
) -> float:
    """Peak RSS (MB) of a fresh process that trains a `variant` job on `model_dir`."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--model",
        str(model_dir),
        "--data",
        data,
        "--steps",
        str(steps),
        "--batch-size",
        str(batch_size),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    peak = next((line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK_KB ")), None)
    if done.returncode or peak is None:
        raise RuntimeError(f"{variant} job failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return int(peak) / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if a.child:
        child(a.model, a.data, a.child, a.steps, a.batch_size)
        return 0
    from bench.train_throughput import ensure_model

    model_dir = str(ensure_model(Path(a.model)))
    peaks = {}
    for variant in VARIANTS:
        peaks[variant] = job_peak_rss_mb(model_dir, variant, steps=a.steps, batch_size=a.batch_size, data=a.data)
        print(f"{variant:10s} peak RSS {peaks[variant]:7.0f} MB", flush=True)
    print(
        f"QLoRA / 16-bit LoRA (bf16) peak RSS: {peaks['qlora'] / peaks['lora-bf16']:.2f}; "
        f"QLoRA / fp32 LoRA: {peaks['qlora'] / peaks['lora-fp32']:.2f}"
    )
    print("RESULT " + json.dumps(peaks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
