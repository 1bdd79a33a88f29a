"""The memory estimate against the measured peak of real runs: the demo model (SmolLM2-135M) on the demo
dataset, LoRA at the CPU's auto precision, LoRA in fp32 and QLoRA, a couple of steps each in a fresh process
(bench/measure_peak.py reads its VmHWM). Marked slow; the three runs go side by side to stay short."""

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

from worker.config import TrainConfig
from worker.data.normalized import read_normalized_jsonl
from worker.data.report import token_profile
from worker.estimate import DataShape, estimate
from worker.modeling import load_tokenizer

pytestmark = pytest.mark.slow
DEMO_DATA = settings.BASE_DIR / "worker" / "demo_data" / "demo_dataset.jsonl"
SHAPE = dict(max_steps=2, batch_size=8, max_seq_length=256)
CONFIGS = {"lora-auto": {}, "lora-fp32": {"precision": "fp32"}, "qlora": {"qlora": True}}


@pytest.fixture(scope="module")
def demo_dir():
    from worker.demo_model import convert_gguf_to_hf, find_demo_gguf

    return convert_gguf_to_hf(find_demo_gguf(), settings.DEMO_MODEL_DIR)


def test_estimated_peak_memory_is_within_a_quarter_of_the_measured_one(demo_dir, tmp_path, monkeypatch):
    env = {**os.environ, "LORA_STUDIO_CPU_BF16": "", "PYTHONPATH": str(settings.BASE_DIR)}  # the real CPU
    runs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.measure_peak",
                str(demo_dir),
                str(DEMO_DATA),
                str(tmp_path / name),
                json.dumps({**SHAPE, **extra}),
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, extra in CONFIGS.items()
    }
    measured = {}
    for name, proc in runs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, name
        measured[name] = json.loads(out.strip().splitlines()[-1])["peak_mb"]

    examples = list(read_normalized_jsonl(DEMO_DATA))
    profile = token_profile(load_tokenizer(str(demo_dir)), examples)
    report = profile.report(SHAPE["max_seq_length"])
    data = DataShape(longest=max(report.lengths), labelled=report.trained_tokens / len(report.lengths))
    monkeypatch.delenv("LORA_STUDIO_CPU_BF16")  # conftest pins fp32; the runs used the real CPU
    estimated = {
        name: estimate(
            str(demo_dir),
            TrainConfig(**SHAPE, **extra),
            n_examples=len(examples),
            mean_tokens=sum(report.lengths) / len(report.lengths),
            device="cpu",
            data=data,
        ).memory_mb
        for name, extra in CONFIGS.items()
    }
    for name in CONFIGS:
        assert abs(estimated[name] - measured[name]) / measured[name] <= 0.25, (name, estimated, measured)
    # QLoRA against 16-bit LoRA: the estimate orders them as the runs did.
    assert (estimated["qlora"] < estimated["lora-auto"]) == (measured["qlora"] < measured["lora-auto"]), (
        estimated,
        measured,
    )
