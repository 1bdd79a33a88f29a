"""DPO and ORPO: the product's losses and gradients against TRL's (the oracle), and a tiny model that
learns synthetic preferences."""

import json
import random
from types import SimpleNamespace

import pytest
import torch

from tests.waiting import wait_until
from worker.batching import collate_pairs
from worker.config import ConfigError, TrainConfig, TrainSpec
from worker.data.examples import Example
from worker.data.normalized import write_normalized_jsonl
from worker.data.tokenization import IGNORE_INDEX, tokenize_pairs
from worker.engine import train
from worker.errors import TrainingError
from worker.loss import preference_loss
from worker.modeling import choose_device, load_base_model, load_tokenizer
from worker.reporting import MemoryReporter

BETA = 0.25


def _pairs() -> list[Example]:
    """Three pairs; the second has history with an assistant turn that must not be trained."""

    def msg(role, content):
        return {"role": role, "content": content}

    return [
        Example(
            1,
            [msg("user", "what colour is the sky")],
            chosen=[msg("assistant", "blue")],
            rejected=[msg("assistant", "green, red and yellow")],
        ),
        Example(
            2,
            [
                msg("system", "reply in JSON"),
                msg("user", "hello"),
                msg("assistant", '{"name": "Ada"}'),
                msg("user", "the city please"),
            ],
            chosen=[msg("assistant", '{"city": "Paris"}')],
            rejected=[msg("assistant", "no")],
        ),
        Example(3, [msg("user", "0 1 2 3")], chosen=[msg("assistant", "4 5 6")], rejected=[msg("assistant", "9 9")]),
    ]


def _randomise_lora_b(peft_model) -> None:
    """B starts at zero; random B makes the policy differ from the reference (the adapter disabled)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


def _ours(model, pairs, method):
    model.zero_grad()
    part = preference_loss(model, collate_pairs(pairs, 0, "cpu"), method, BETA)
    loss = part.total(len(pairs), sum(p.chosen.trained_tokens for p in pairs))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(ours, theirs):
    (loss, grads), (ref_loss, ref_grads) = ours, theirs
    assert abs(loss.item() - ref_loss.item()) < 1e-5, (loss.item(), ref_loss.item())
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name in grads:
        assert torch.allclose(grads[name], ref_grads[name], atol=1e-5, rtol=0), name
    assert max(g.abs().max().item() for g in grads.values()) > 1e-4  # not a vacuous match


def test_dpo_and_orpo_losses_and_gradients_match_trl(tiny_llama, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    tokenizer = load_tokenizer(str(tiny_llama))
    examples = _pairs()
    pairs = tokenize_pairs(tokenizer, examples, 256)

    # DPO: TRL's own trainer (its tokenization, collator, reference = adapter disabled, sigmoid loss). TRL adds
    # the adapter itself, so its reference is the bare base as ours is (given an adapter, it would copy it).
    rows = [{"prompt": e.messages, "chosen": e.chosen, "rejected": e.rejected} for e in examples]
    trainer = DPOTrainer(
        model=load_base_model(str(tiny_llama), choose_device("cpu"), TrainConfig()),
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(rows),
        peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"),
        args=DPOConfig(
            output_dir=str(tmp_path / "trl"),
            beta=BETA,
            report_to=[],
            use_cpu=True,
            gradient_checkpointing=False,
            bf16=False,
            max_length=None,
            per_device_train_batch_size=3,
            dataset_num_proc=None,
        ),
    )
    model = trainer.model
    _randomise_lora_b(model)
    ours = _ours(model, pairs, "dpo")
    tokenized = list(trainer.train_dataset)
    for pair, row in zip(pairs, tokenized, strict=True):  # the same tokens, trained on the same positions
        for side, answer in ((pair.chosen, row["chosen_ids"]), (pair.rejected, row["rejected_ids"])):
            assert side.input_ids == row["prompt_ids"] + answer
            assert [t != IGNORE_INDEX for t in side.labels] == [False] * len(row["prompt_ids"]) + [True] * len(answer)
    inputs = trainer.data_collator(
        [{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for row in tokenized]
    )
    model.zero_grad()
    trl_loss = trainer.compute_loss(model, inputs)
    trl_loss.backward()
    _assert_same(ours, (trl_loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))

    # ORPO: TRL's odds_ratio_loss and get_batch_logps (length-averaged) on the same logits; the SFT term is the
    # mean NLL of the chosen answer tokens (the "loss on the answer tokens only").
    ours = _ours(model, pairs, "orpo")
    model.zero_grad()
    batch = collate_pairs(pairs, 0, "cpu")
    logits = model(input_ids=batch.ids, attention_mask=batch.attention_mask).logits
    n = len(pairs)
    logps = ORPOTrainer.get_batch_logps(logits, batch.labels, average_log_prob=True)
    fake = SimpleNamespace(beta=BETA, accelerator=SimpleNamespace(device="cpu"))
    losses = ORPOTrainer.odds_ratio_loss(fake, logps[:n], logps[n:])[0]
    nll = torch.nn.CrossEntropyLoss()(logits[:n, :-1].reshape(-1, logits.shape[-1]), batch.labels[:n, 1:].reshape(-1))
    trl_loss = nll - losses.mean()
    trl_loss.backward()
    _assert_same(ours, (trl_loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))


COLOURS = ["red", "green", "blue"]
FILLER = ["hello", "world", "please", "the", "answer", "what", "is"]


def colour_pairs(n: int, seed: int) -> list[Example]:
    """The chosen answer repeats the prompt's colour, the rejected one names another: every ordered
    colour pair is as likely, so a model with no idea of the rule is right about half the time."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        right, wrong = rng.sample(COLOURS, 2)
        a, b = rng.sample(FILLER, 2)
        out.append(
            Example(
                i + 1,
                [{"role": "user", "content": f"{a} {right} {b}"}],
                chosen=[{"role": "assistant", "content": right}],
                rejected=[{"role": "assistant", "content": wrong}],
            )
        )
    return out


def test_dpo_learns_synthetic_preferences(tiny_llama, tmp_path):
    write_normalized_jsonl(colour_pairs(48, 1), tmp_path / "train.jsonl")
    write_normalized_jsonl(colour_pairs(24, 2), tmp_path / "eval.jsonl")
    cfg = TrainConfig(
        method="dpo",
        beta=0.1,
        batch_size=8,
        learning_rate=2e-2,
        warmup_ratio=0.0,
        epochs=3,
        target_preset="all_linear",
        rank=8,
        alpha=16,
        dropout=0.0,
        eval_every=6,
    )
    reporter = MemoryReporter()
    result = train(
        TrainSpec(
            str(tiny_llama),
            str(tmp_path / "train.jsonl"),
            str(tmp_path / "out"),
            cfg,
            eval_dataset_path=str(tmp_path / "eval.jsonl"),
            device="cpu",
        ),
        reporter,
    )
    assert result.status == "succeeded" and result.steps_done == 18
    points = dict(reporter.points)
    assert {"loss", "reward_margin", "reward_accuracy"} <= points[1].keys()
    assert points[1]["reward_margin"] == 0.0 and abs(points[1]["loss"] - 0.6931) < 1e-3  # policy == reference
    assert {"eval_loss", "eval_reward_margin", "eval_reward_accuracy"} <= points[18].keys()
    assert points[18]["reward_margin"] > 0.5 and points[18]["eval_reward_accuracy"] > 0.9
    evaluation = json.loads((tmp_path / "out/evaluation.json").read_text())
    assert evaluation["kind"] == "preference" and evaluation["examples"] == 24
    assert 0.25 <= evaluation["accuracy"]["base"] <= 0.75, evaluation["accuracy"]
    assert evaluation["accuracy"]["adapter"] > 0.9, evaluation["accuracy"]
    assert evaluation["loss"]["adapter"] < evaluation["loss"]["base"]
    assert len(evaluation["rows"]) == 20 and {"prompt", "chosen", "rejected"} <= evaluation["rows"][0].keys()


def test_method_and_dataset_must_agree(tiny_llama, tmp_path, chat_file):
    write_normalized_jsonl(colour_pairs(4, 1), tmp_path / "pairs.jsonl")
    with pytest.raises(TrainingError, match="supervised tuning needs examples"):
        train(
            TrainSpec(str(tiny_llama), str(tmp_path / "pairs.jsonl"), str(tmp_path / "a"), TrainConfig(), device="cpu"),
            MemoryReporter(),
        )
    with pytest.raises(TrainingError, match="method orpo trains on preference pairs"):
        train(
            TrainSpec(str(tiny_llama), str(chat_file), str(tmp_path / "b"), TrainConfig(method="orpo"), device="cpu"),
            MemoryReporter(),
        )


@pytest.mark.parametrize(
    "values, field",
    [
        ({"method": "ppo"}, "method"),
        ({"method": "dpo", "beta": 0}, "beta"),
        ({"method": "orpo", "beta": 0}, "beta"),
        ({"method": "dpo", "packing": True}, "packing"),
        ({"method": "dpo", "init_lora_weights": "pissa"}, "init_lora_weights"),
    ],
)
def test_config_refuses(values, field):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(values)
    assert err.value.field == field


def test_dpo_killed_mid_run_resumes_to_the_same_losses(tiny_llama, tmp_path):
    """kill -9 during the step-5 evaluation (checkpoints at steps 2 and 4); the rerun resumes from step 4 and
    steps 5-8 match an uninterrupted run exactly (dropout on, so the RNG state must come back too)."""
    import os
    import signal
    import subprocess
    import sys

    write_normalized_jsonl(colour_pairs(8, 1), tmp_path / "train.jsonl")
    write_normalized_jsonl(colour_pairs(2, 2), tmp_path / "eval.jsonl")
    cfg = TrainConfig(
        method="dpo",
        batch_size=2,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        epochs=2,
        rank=4,
        alpha=8,
        target_preset="all_linear",
        dropout=0.1,
        save_every=2,
        eval_every=5,
        final_eval=False,
    )

    def spec(out):
        return TrainSpec(
            str(tiny_llama),
            str(tmp_path / "train.jsonl"),
            str(out),
            cfg,
            eval_dataset_path=str(tmp_path / "eval.jsonl"),
            device="cpu",
        )

    (tmp_path / "spec.json").write_text(json.dumps(spec(tmp_path / "killed").to_dict()))
    env = {**os.environ, "LORA_STUDIO_FAILPOINTS": "evaluate=60", "LORA_STUDIO_FAILPOINT_DIR": str(tmp_path / "fp")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "train", str(tmp_path / "spec.json")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def at_its_evaluation() -> bool:
            assert proc.poll() is None, "the run never reached its evaluation"
            return (tmp_path / "fp/evaluate").exists()

        wait_until(at_its_evaluation, timeout=120, interval=0.1, what="the run to reach its evaluation")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert sorted(p.name for p in (tmp_path / "killed/checkpoints").iterdir()) == ["step-000002", "step-000004"]

    straight, resumed = MemoryReporter(), MemoryReporter()
    assert train(spec(tmp_path / "straight"), straight).steps_done == 8
    result = train(spec(tmp_path / "killed"), resumed)
    assert result.status == "succeeded" and result.steps_done == 8
    assert ("resume", "resumed from checkpoint at step 4") in resumed.events
    expected = {s: m for s, m in straight.points if s > 4}
    got = dict(resumed.points)
    assert sorted(got) == list(range(5, 9))
    for step, metrics in expected.items():
        for key in ("loss", "reward_margin", "reward_accuracy"):
            assert got[step][key] == metrics[key], (step, key)


def test_estimate_counts_both_sides_and_the_reference_pass(tiny_llama):
    from worker.estimate import estimate

    def run(**cfg):
        return estimate(str(tiny_llama), TrainConfig(**cfg), n_examples=32, mean_tokens=50, tokens_per_s=1000.0)

    sft, orpo, dpo = run(), run(method="orpo"), run(method="dpo")
    assert orpo.seconds == pytest.approx(2 * sft.seconds)  # two sequences per pair
    assert dpo.seconds == pytest.approx(2 * (1 + 1 / 3) * sft.seconds)  # plus the forward-only reference pass
    assert orpo.breakdown["activations"] == pytest.approx(2 * sft.breakdown["activations"])
    assert "reference_pass" in dpo.breakdown and "reference_pass" not in orpo.breakdown
    assert dpo.memory_mb > orpo.memory_mb > sft.memory_mb
    assert dpo.trainable_params == sft.trainable_params
    on_top = run(method="dpo", start_from="0" * 32)  # reference log-probs once, before training
    assert on_top.seconds == pytest.approx(orpo.seconds + 32 * 2 * 50 / 3 / 1000.0)
    assert "reference_pass" not in on_top.breakdown


def test_dpo_on_top_of_a_supervised_adapter(tiny_llama, tmp_path, chat_file):
    """The start and the reference are the earlier adapter, not the base: at the first step policy and
    reference agree (loss log 2, margin 0), while the base scores differently against that reference."""
    from safetensors.torch import load_file

    from tests.worker.test_engine import spec_for

    sft = train(spec_for(tiny_llama, chat_file, tmp_path / "sft", epochs=1, dropout=0.0), MemoryReporter())
    write_normalized_jsonl(colour_pairs(16, 1), tmp_path / "train.jsonl")
    write_normalized_jsonl(colour_pairs(8, 2), tmp_path / "eval.jsonl")
    job_x = "0" * 32
    cfg = TrainConfig(
        method="dpo",
        start_from=job_x,
        batch_size=4,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        epochs=1,
        rank=8,
        alpha=16,
        target_preset="all_linear",
        dropout=0.0,
    )
    reporter = MemoryReporter()
    result = train(
        TrainSpec(
            str(tiny_llama),
            str(tmp_path / "train.jsonl"),
            str(tmp_path / "dpo"),
            cfg,
            eval_dataset_path=str(tmp_path / "eval.jsonl"),
            device="cpu",
            start_adapter_dir=sft.adapter_dir,
        ),
        reporter,
    )
    first = dict(reporter.points)[1]
    assert abs(first["loss"] - 0.693147) < 1e-5 and first["reward_margin"] == 0.0
    assert ("setup", f"starting from the adapter of job {job_x} (also DPO's reference)") in reporter.events
    evaluation = json.loads((tmp_path / "dpo/evaluation.json").read_text())
    assert evaluation["loss"]["base"] != pytest.approx(0.693147, abs=1e-4)  # measured against the SFT adapter
    assert evaluation["reward_margin"]["adapter"] > 0  # and DPO moved on from it
    before = load_file(f"{sft.adapter_dir}/adapter_model.safetensors")
    after = load_file(f"{result.adapter_dir}/adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)

    wrong = TrainConfig(method="dpo", start_from=job_x, rank=4, target_preset="all_linear")
    with pytest.raises(TrainingError, match="has rank 8"):
        train(
            TrainSpec(
                str(tiny_llama),
                str(tmp_path / "train.jsonl"),
                str(tmp_path / "bad"),
                wrong,
                device="cpu",
                start_adapter_dir=sft.adapter_dir,
            ),
            MemoryReporter(),
        )
