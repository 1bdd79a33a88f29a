"""bench/gpu_train.py's pure parts: its arguments, the loss-agreement rule, the timing and which set-ups skip."""

from __future__ import annotations

import pytest

from bench.gpu_train import (
    LOSS_TOLERANCE,
    engine_config,
    loss_agrees,
    loss_difference,
    parse_args,
    skip_reason,
    timed_tokens_per_s,
)


def test_defaults_and_dry_run_defaults():
    a = parse_args([])
    assert (a.size, a.seq, a.steps, a.timed, a.batch) == ("0.5b", 2048, 30, 20, 8)
    assert a.setup_list[0] == "hf-a" and "engine" in a.setup_list and "unsloth" in a.setup_list
    d = parse_args(["--dry-run-cpu"])
    assert (d.seq, d.steps, d.timed) == (64, 4, 2)
    s = parse_args(["--size", "1.5b", "--setups", "hf-a, engine", "--qlora"])
    assert s.size == "1.5b" and s.setup_list == ["hf-a", "engine"] and s.qlora


@pytest.mark.parametrize("argv", [["--setups", "hf-a,nope"], ["--timed", "30"], ["--timed", "0"], ["--size", "7b"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_loss_agreement_uses_the_mean_of_the_last_five_steps():
    ref = [10.0] * 5 + [4.0] * 5
    assert loss_difference(ref, ref) == 0
    close = [11.0] * 5 + [4.0 * (1 + LOSS_TOLERANCE * 0.9)] * 5  # early steps may differ
    assert loss_agrees(ref, close)
    far = [10.0] * 5 + [4.0 * (1 + LOSS_TOLERANCE * 1.1)] * 5
    assert not loss_agrees(ref, far)
    assert loss_difference(ref, far) == pytest.approx(LOSS_TOLERANCE * 1.1)
    assert not loss_agrees(ref, ref[:-1])  # a run that stopped early does not count


def test_timed_tokens_per_s_leaves_the_warm_up_out():
    # 4 steps ending at t = 10 (a slow first step), 11, 12, 13; the last 2 timed: 2 s for 300 tokens
    assert timed_tokens_per_s([1000, 100, 100, 200], [10.0, 11.0, 12.0, 13.0], 2) == 150.0


def test_engine_levers_turn_off_one_at_a_time():
    common = {"rank": 16}
    on = engine_config("engine", cuda=True, liger_ok=True, qlora=False, common=common)
    assert on["packing"] and on["liger"] and not on.get("gradient_checkpointing")
    assert not engine_config("engine-no-packing", cuda=True, liger_ok=True, qlora=False, common=common)["packing"]
    assert not engine_config("engine-no-liger", cuda=True, liger_ok=True, qlora=False, common=common)["liger"]
    assert engine_config("engine-gc", cuda=True, liger_ok=True, qlora=True, common=common)["gradient_checkpointing"]
    assert engine_config("engine-defaults", cuda=True, liger_ok=True, qlora=False, common=common) == {
        "rank": 16,
        "qlora": False,
    }
    assert not engine_config("engine", cuda=False, liger_ok=True, qlora=False, common=common)["liger"]


def test_what_cannot_run_is_skipped_with_a_reason():
    none: dict[str, bool] = {}
    assert skip_reason("hf-a", cuda=False, has=none, qlora=False) is None
    assert skip_reason("hf-b", cuda=False, has=none, qlora=False) is None  # the dry run: flattening without Liger
    assert "liger_kernel" in (skip_reason("hf-b", cuda=True, has=none, qlora=False) or "")
    assert "CUDA" in (skip_reason("unsloth", cuda=False, has=none, qlora=False) or "")
    assert "not installed" in (skip_reason("unsloth", cuda=True, has=none, qlora=False) or "")
    assert "bitsandbytes" in (skip_reason("engine", cuda=True, has=none, qlora=True) or "")
    assert skip_reason("hf-b", cuda=True, has={"liger_kernel": True}, qlora=False) is None
