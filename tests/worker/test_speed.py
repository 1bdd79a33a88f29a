"""This machine's measured speed: once per process and cached in a file; it times the first estimate."""

import json

import pytest

from worker import speed
from worker.config import TrainConfig
from worker.estimate import estimate


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(speed, "_memo", {})


def test_the_rate_is_measured_once_then_read_from_the_cache_file(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(speed, "_measure", lambda device, width: calls.append((device, width)) or 2e9)
    cache = tmp_path / "var" / "speed.json"
    assert speed.matmul_flops("cpu", 2, cache) == 2e9
    assert speed.matmul_flops("cpu", 2, cache) == 2e9 and calls == [("cpu", 2)]  # in-process
    assert json.loads(cache.read_text()) == {"cpu-2": 2e9}
    monkeypatch.setattr(speed, "_memo", {})  # another process: reads the file
    assert speed.matmul_flops("cpu", 2, cache) == 2e9 and len(calls) == 1
    assert speed.matmul_flops("cpu", 4, cache) == 2e9 and calls[-1] == ("cpu", 4)  # another dtype: measured
    assert set(json.loads(cache.read_text())) == {"cpu-2", "cpu-4"}


def test_a_real_measurement_is_a_positive_rate():
    assert speed._measure("cpu", 4) > 1e6


def test_the_first_estimate_has_a_calibrated_time_and_a_measured_rate_wins(tiny_llama):
    cfg = TrainConfig(batch_size=4, grad_accum=2, epochs=1)
    unknown = estimate(str(tiny_llama), cfg, n_examples=16, mean_tokens=20)
    assert unknown.seconds is None and unknown.seconds_source is None
    slow = estimate(str(tiny_llama), cfg, n_examples=16, mean_tokens=20, flops_per_s=1e9)
    fast = estimate(str(tiny_llama), cfg, n_examples=16, mean_tokens=20, flops_per_s=4e9)
    assert slow.seconds_source == "calibrated" and slow.seconds > 0
    assert slow.seconds == pytest.approx(4 * fast.seconds)  # time is work / speed
    base = slow.total_params - slow.trainable_params
    per_s = speed.calibrated_tokens_per_s(1e9, base, gradient_checkpointing=False, qlora=False)
    assert slow.seconds == pytest.approx(slow.steps * 8 * 20 / per_s)
    ckpt = estimate(
        str(tiny_llama),
        TrainConfig(batch_size=4, grad_accum=2, epochs=1, gradient_checkpointing=True),
        n_examples=16,
        mean_tokens=20,
        flops_per_s=1e9,
    )
    assert ckpt.seconds == pytest.approx(1.5 * slow.seconds)  # the recomputed forward pass
    qlora = estimate(
        str(tiny_llama),
        TrainConfig(batch_size=4, grad_accum=2, epochs=1, qlora=True),
        n_examples=16,
        mean_tokens=20,
        flops_per_s=1e9,
    )
    assert qlora.seconds == pytest.approx(speed.QLORA_SLOWDOWN["cpu"] * slow.seconds)  # dequantizing
    measured = estimate(str(tiny_llama), cfg, n_examples=16, mean_tokens=20, flops_per_s=1e9, tokens_per_s=80.0)
    assert measured.seconds_source == "measured" and measured.seconds == pytest.approx(measured.steps * 8 * 20 / 80)
