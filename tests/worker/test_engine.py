"""Engine tests on tiny random models built in the test (no downloads)."""

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from worker.config import TrainConfig, TrainSpec
from worker.engine import train
from worker.modeling import build_peft_model, choose_device, load_base_model
from worker.reporting import MemoryReporter
from worker.schedule import epoch_batches, lr_multiplier, plan_steps

FAST = dict(batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, target_preset="all_linear", rank=8, alpha=16)


def spec_for(model_dir, data, out, **cfg):
    return TrainSpec(str(model_dir), str(data), str(out), TrainConfig(**{**FAST, **cfg}), device="cpu")


def test_adapter_starts_as_the_base(tiny_llama):
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    expected = base(input_ids=ids).logits
    model = load_base_model(str(tiny_llama), choose_device("cpu"), TrainConfig())
    peft_model, targets = build_peft_model(model, TrainConfig(dropout=0.0))
    assert targets == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)
    assert torch.equal(peft_model(input_ids=ids).logits, expected)


def test_loss_falls_and_saved_adapter_reloads_to_identical_logits(tiny_llama, chat_file, tmp_path):
    reporter = MemoryReporter()
    result = train(spec_for(tiny_llama, chat_file, tmp_path / "out", epochs=12), reporter)
    losses = reporter.losses()
    assert result.status == "succeeded" and result.steps_done == 24 == len(losses)
    assert losses[24] < 0.35 * losses[1], losses
    assert sorted(losses) == list(range(1, 25))
    assert (tmp_path / "out/adapter/adapter_model.safetensors").is_file()
    assert (tmp_path / "out/adapter/tokenizer_config.json").is_file()

    ids = torch.tensor([[1, 5, 9, 20, 33, 7]])
    with torch.no_grad():
        trained = result.model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), result.adapter_dir)
        base = AutoModelForCausalLM.from_pretrained(tiny_llama)(input_ids=ids).logits
        assert torch.allclose(reloaded(input_ids=ids).logits, trained, atol=1e-5)
        assert not torch.allclose(base, trained, atol=1e-3)


def test_qlora_trains_on_cpu(tiny_llama, chat_file, tmp_path):
    import bitsandbytes as bnb

    reporter = MemoryReporter()
    result = train(spec_for(tiny_llama, chat_file, tmp_path / "q", epochs=6, qlora=True), reporter)
    losses = reporter.losses()
    assert result.status == "succeeded"
    assert losses[max(losses)] < 0.6 * losses[1]
    base_layers = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert base_layers, "the frozen base must be 4-bit"
    assert base_layers[0].weight.quant_type == "nf4"
    lora = [p for n, p in result.model.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad and p.dtype == torch.float32 for p in lora)


def test_gpt2_style_model_trains_attention(tiny_gpt2, chat_file, tmp_path):
    reporter = MemoryReporter()
    result = train(spec_for(tiny_gpt2, chat_file, tmp_path / "g", epochs=4, target_preset="attention"), reporter)
    assert result.targets == ["attn.c_attn", "attn.c_proj"]
    assert result.status == "succeeded" and reporter.losses()[8] < reporter.losses()[1]


def test_cancel_stops_before_the_next_step(tiny_llama, chat_file, tmp_path):
    reporter = MemoryReporter()
    result = train(
        spec_for(tiny_llama, chat_file, tmp_path / "c", epochs=10),
        reporter,
        lambda: "cancel" if len(reporter.points) >= 3 else None,
    )
    assert result.status == "cancelled" and result.steps_done == 3
    assert [s for s, _ in reporter.points] == [1, 2, 3]
    assert not (tmp_path / "c/adapter").exists()


def test_pause_then_resume_continues_the_same_curve(tiny_llama, chat_file, tmp_path):
    straight = MemoryReporter()
    train(spec_for(tiny_llama, chat_file, tmp_path / "a", epochs=6, dropout=0.1), straight)

    first = MemoryReporter()
    paused = train(
        spec_for(tiny_llama, chat_file, tmp_path / "b", epochs=6, dropout=0.1),
        first,
        lambda: "pause" if len(first.points) >= 5 else None,
    )
    assert paused.status == "paused" and paused.steps_done == 5
    assert (tmp_path / "b/checkpoints/step-000005/optimizer.safetensors").is_file()
    second = MemoryReporter()
    resumed = train(spec_for(tiny_llama, chat_file, tmp_path / "b", epochs=6, dropout=0.1), second)
    assert resumed.status == "succeeded"
    assert [s for s, _ in second.points] == list(range(6, 13))
    expected = straight.losses()
    for step, loss in second.losses().items():
        assert abs(loss - expected[step]) < 1e-4, (step, loss, expected[step])
    a = load_file(str(tmp_path / "a/adapter/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b/adapter/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_schedule_and_batching_helpers():
    assert lr_multiplier(0, 100, 10, "linear") == 0.1
    assert lr_multiplier(10, 100, 10, "linear") == 1.0
    assert lr_multiplier(99, 100, 0, "linear") < 0.02
    assert abs(lr_multiplier(50, 100, 0, "cosine") - 0.5) < 1e-9
    assert plan_steps(10, TrainConfig(batch_size=4, epochs=3)) == (3, 9)
    assert plan_steps(10, TrainConfig(batch_size=4, grad_accum=2, max_steps=5)) == (2, 5)
    lengths = [5, 50, 7, 48, 6, 49, 8, 47]
    batches = epoch_batches(lengths, 2, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert batches == epoch_batches(lengths, 2, seed=1, epoch=0)
    assert batches != epoch_batches(lengths, 2, seed=1, epoch=1)
    assert all(abs(lengths[b[0]] - lengths[b[1]]) <= 3 for b in batches), "similar lengths batch together"


def test_eval_loss_is_reported_on_the_validation_set(tiny_llama, chat_file, tmp_path):
    from tests.conftest import memorisable_conversations, write_jsonl

    valid = write_jsonl(tmp_path / "valid.jsonl", [{"messages": m} for m in memorisable_conversations(4)])
    reporter = MemoryReporter()
    spec = TrainSpec(
        str(tiny_llama),
        str(chat_file),
        str(tmp_path / "e"),
        TrainConfig(**{**FAST, "epochs": 5, "eval_every": 3}),
        eval_dataset_path=str(valid),
        device="cpu",
    )
    train(spec, reporter)
    evals = {step: m["eval_loss"] for step, m in reporter.points if "eval_loss" in m}
    assert sorted(evals) == [3, 6, 9, 10], "every 3 steps and at the end"
    assert evals[10] < evals[3], "the validation examples are in the training set here, so eval loss falls"


def test_final_evaluation_compares_base_and_adapter(tiny_llama, chat_file, tmp_path):
    import json

    from worker.evaluation import answer_scores, summary_markdown

    spec = TrainSpec(
        str(tiny_llama),
        str(chat_file),
        str(tmp_path / "f"),
        TrainConfig(**{**FAST, "epochs": 12, "dropout": 0.0}),
        eval_dataset_path=str(chat_file),
        device="cpu",
    )
    train(spec, MemoryReporter())
    evaluation = json.loads((tmp_path / "f/evaluation.json").read_text())
    assert evaluation["examples"] == 8 and len(evaluation["rows"]) == 8
    assert evaluation["loss"]["adapter"] < evaluation["loss"]["base"]
    assert evaluation["rates"]["adapter"]["exact"] >= 0.75 > evaluation["rates"]["base"]["exact"]
    assert evaluation["rates"]["adapter"]["same_keys"] >= 0.75
    row = evaluation["rows"][2]
    assert row["prompt"] == "colour 2" and row["reference"] == '{"answer": "blue"}'
    assert "| exact match (8 held-out prompts) |" in summary_markdown(evaluation)
    assert answer_scores('{"a": 1}', ' {"a": 2}') == {"exact": False, "valid_json": True, "same_keys": True}
    assert answer_scores('{"a": 1}', "a is 1") == {"exact": False, "valid_json": False, "same_keys": False}
    assert answer_scores("yes", " yes ") == {"exact": True, "valid_json": None, "same_keys": None}


def test_the_reporter_hears_of_each_checkpoint_once_it_is_whole(tiny_llama, chat_file, tmp_path):
    """The hook the web app copies checkpoints to the object store from: called after each save, with the
    folder as it will be read back."""
    seen = []

    class StoreReporter(MemoryReporter):
        def checkpoint_saved(self, folder):
            seen.append((folder.name, sorted(p.name for p in folder.iterdir())))

    result = train(spec_for(tiny_llama, chat_file, tmp_path / "h", max_steps=7, save_every=3), StoreReporter())
    assert result.status == "succeeded"
    files = [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "trainer_state.json",
    ]
    assert seen == [("step-000003", files), ("step-000006", files)]
