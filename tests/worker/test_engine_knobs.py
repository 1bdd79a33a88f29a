"""Engine knobs beyond the core loop: packing, init, modules_to_save, optimizer, early stopping,
keeping the best adapter, determinism and progress metrics. Tiny random Llama and GPT-2 models."""

import dataclasses
import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.conftest import memorisable_conversations, write_jsonl
from worker.batching import collate, collate_packed
from worker.checkpoint import save_adapter
from worker.config import ConfigError, TrainConfig, TrainSpec
from worker.data.normalized import read_normalized_jsonl
from worker.data.tokenization import TokenizedExample, tokenize_examples
from worker.early_stopping import BestTracker
from worker.engine import train
from worker.errors import TrainingError
from worker.estimate import estimate
from worker.loss import summed_token_loss
from worker.modeling import build_peft_model, choose_device, get_peft_config, load_base_model, load_tokenizer
from worker.reporting import MemoryReporter
from worker.run_state import build_optimizer
from worker.targets import saveable_modules

FAST = dict(batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, target_preset="all_linear", rank=8, alpha=16)
CPU = choose_device("cpu")


def spec_for(model_dir, data, out, valid=None, **cfg):
    return TrainSpec(
        str(model_dir),
        str(data),
        str(out),
        TrainConfig(**{**FAST, **cfg}),
        eval_dataset_path=str(valid) if valid else None,
        device="cpu",
    )


def _examples(model_dir, chat_file) -> list[TokenizedExample]:
    return tokenize_examples(load_tokenizer(str(model_dir)), read_normalized_jsonl(str(chat_file)), 256)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_packed_logits_equal_separate_ones(arch, request):
    """One row, block-diagonal causal mask, restarted positions: each example sees only itself."""
    model_dir = request.getfixturevalue(arch)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(1)
    lengths = [9, 17, 4, 12]
    examples = [TokenizedExample(input_ids=torch.randint(3, 300, (n,)).tolist(), labels=[1] * n) for n in lengths]
    batch = collate_packed(examples, "cpu")
    assert batch.ids.shape == (1, sum(lengths)) and batch.tokens == sum(lengths)
    with torch.no_grad():
        packed = model(
            input_ids=batch.ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits[0]
        separate = torch.cat([model(input_ids=torch.tensor([e.input_ids])).logits[0] for e in examples])
        leaky = model(input_ids=batch.ids, position_ids=batch.position_ids).logits[0]
    assert torch.allclose(packed, separate, atol=1e-4), (packed - separate).abs().max()
    assert not torch.allclose(leaky, separate, atol=1e-2), "without the mask, examples attend to each other"


def test_packed_loss_equals_padded_loss(tiny_llama, chat_file):
    examples = _examples(tiny_llama, chat_file)
    model = load_base_model(str(tiny_llama), CPU)
    peft_model, _ = build_peft_model(model, TrainConfig(dropout=0.0))
    with torch.no_grad():
        padded, n_padded = summed_token_loss(peft_model, collate(examples, 0, "cpu"))
        packed, n_packed = summed_token_loss(peft_model, collate_packed(examples, "cpu"))
    assert n_packed == n_padded == sum(e.trained_tokens for e in examples)
    assert torch.allclose(packed, padded, rtol=1e-5)


def test_training_with_packing_follows_the_padded_curve(tiny_llama, chat_file, tmp_path):
    curves = {}
    for packing in (False, True):
        reporter = MemoryReporter()
        train(
            spec_for(tiny_llama, chat_file, tmp_path / str(packing), epochs=3, dropout=0.0, packing=packing), reporter
        )
        curves[packing] = reporter.losses()
    assert curves[True].keys() == curves[False].keys()
    for step in curves[True]:
        assert curves[True][step] == pytest.approx(curves[False][step], rel=1e-3), step


def test_same_seed_same_data_gives_the_same_curve(tiny_llama, chat_file, tmp_path):
    def curve(seed, name):
        reporter = MemoryReporter()
        train(spec_for(tiny_llama, chat_file, tmp_path / name, epochs=3, seed=seed), reporter)
        return reporter.losses()

    first, again, other = curve(7, "a"), curve(7, "b"), curve(8, "c")
    assert first == again, "bit-identical on CPU with the same seed (dropout included)"
    assert first != other


def test_progress_metrics_are_reported(tiny_llama, chat_file, tmp_path):
    reporter = MemoryReporter()
    train(spec_for(tiny_llama, chat_file, tmp_path / "p", epochs=1), reporter)
    step, metrics = reporter.points[-1]
    assert step == metrics["total_steps"] == 2
    for key in ("loss", "lr", "epoch", "tokens_per_s", "eta_s", "grad_norm", "memory_mb"):
        assert key in metrics, key
    assert metrics["memory_mb"] > 50 and metrics["epoch"] == pytest.approx(1.0) and metrics["eta_s"] == 0


def test_pissa_adapter_is_converted_to_plain_lora_for_the_original_base(tiny_llama, tmp_path):
    """PiSSA trains on a residual base; the export must work on the unmodified base."""
    tokenizer = load_tokenizer(str(tiny_llama))
    cfg = TrainConfig(rank=4, alpha=8, dropout=0.0, init_lora_weights="pissa")
    ids = torch.tensor([[1, 5, 9, 20, 33, 7]])
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    model, _ = build_peft_model(load_base_model(str(tiny_llama), CPU), cfg)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-4), (
            "PiSSA starts from the base model's function"
        )
        model.save_pretrained(tmp_path / "init")
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.05)  # stands in for training
        trained = model(input_ids=ids).logits
    save_adapter(model, tmp_path / "adapter", tokenizer=tokenizer, init_dir=tmp_path / "init")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "adapter")
    assert reloaded.peft_config["default"].r == 8, "the converted adapter has rank 2r"
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, trained, atol=1e-4)
        assert not torch.allclose(trained, plain(input_ids=ids).logits, atol=1e-3)


def test_pissa_job_trains_and_evaluates_against_the_real_base(tiny_llama, chat_file, tmp_path):
    valid = write_jsonl(tmp_path / "valid.jsonl", [{"messages": m} for m in memorisable_conversations(3)])
    reporter = MemoryReporter()
    result = train(
        spec_for(
            tiny_llama, chat_file, tmp_path / "pissa", valid, epochs=4, init_lora_weights="pissa", learning_rate=3e-3
        ),
        reporter,
    )
    assert result.status == "succeeded" and reporter.losses()[8] < reporter.losses()[1]
    assert ("saved", "adapter saved (PiSSA converted to plain LoRA for the original base)") in reporter.events
    # The "base" side of the evaluation is the real base, not PiSSA's residual one: same loss as
    # the base side of an ordinary job's evaluation on the same examples.
    train(spec_for(tiny_llama, chat_file, tmp_path / "plain", valid, epochs=1), MemoryReporter())
    pissa = json.loads((tmp_path / "pissa/evaluation.json").read_text())
    plain = json.loads((tmp_path / "plain/evaluation.json").read_text())
    assert pissa["loss"]["base"] == pytest.approx(plain["loss"]["base"], rel=1e-5)
    assert pissa["loss"]["adapter"] < pissa["loss"]["base"]


def test_pissa_refused_with_qlora():
    with pytest.raises(ConfigError) as err:
        TrainConfig(qlora=True, init_lora_weights="pissa")
    assert err.value.field == "init_lora_weights"


def test_gaussian_init_reaches_peft(tiny_llama):
    cfg = TrainConfig(init_lora_weights="gaussian")
    model, _ = build_peft_model(load_base_model(str(tiny_llama), CPU), cfg)
    assert model.peft_config["default"].init_lora_weights == "gaussian"
    default, _ = build_peft_model(load_base_model(str(tiny_llama), CPU), TrainConfig())
    assert default.peft_config["default"].init_lora_weights is True
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert b and all(torch.count_nonzero(p) == 0 for p in b), "B starts at zero whatever the init of A"


@pytest.mark.parametrize("arch, head", [("tiny_llama", "lm_head"), ("tiny_gpt2", "lm_head")])
def test_modules_to_save_are_trained_saved_and_counted_by_the_estimate(arch, head, request, chat_file, tmp_path):
    model_dir = request.getfixturevalue(arch)
    reporter = MemoryReporter()
    result = train(spec_for(model_dir, chat_file, tmp_path / "m", epochs=1, modules_to_save=[head]), reporter)
    saved = load_file(str(tmp_path / "m/adapter/adapter_model.safetensors"))
    assert any(head in key and "lora_" not in key for key in saved), sorted(saved)
    est = estimate(
        str(model_dir), TrainConfig(**{**FAST, "modules_to_save": (head,)}), n_examples=8, mean_tokens=20, device="cpu"
    )
    assert est.trainable_params == result.trainable_params


def test_modules_to_save_unknown_name_lists_the_valid_ones(tiny_llama):
    available = saveable_modules(AutoModelForCausalLM.from_pretrained(tiny_llama))
    assert {"embed_tokens", "lm_head", "norm"} <= set(available)
    with pytest.raises(ConfigError) as err:
        build_peft_model(load_base_model(str(tiny_llama), CPU), TrainConfig(modules_to_save=("wte",)))
    assert err.value.field == "modules_to_save" and "'wte'" in err.value.message and "lm_head" in err.value.message


def test_paged_8bit_optimizer_needs_cuda():
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(TrainingError, match="needs a CUDA GPU"):
        build_optimizer(params, TrainConfig(optimizer="paged_adamw_8bit"), CPU)
    assert isinstance(build_optimizer(params, TrainConfig(), CPU), torch.optim.AdamW)
    with pytest.raises(ConfigError):
        TrainConfig(optimizer="sgd")


def test_paged_8bit_optimizer_needs_less_memory_in_the_estimate(tiny_llama):
    plain = estimate(str(tiny_llama), TrainConfig(), n_examples=8, mean_tokens=20, device="cuda")
    paged = estimate(
        str(tiny_llama), TrainConfig(optimizer="paged_adamw_8bit"), n_examples=8, mean_tokens=20, device="cuda"
    )
    assert paged.breakdown["lora_training"] == pytest.approx(plain.breakdown["lora_training"] * 10 / 16)


def test_best_tracker_patience_and_threshold():
    tracker = BestTracker(patience=2, threshold=0.01)
    assert tracker.update(10, 1.0)
    assert not tracker.update(20, 0.995), "within the threshold is no improvement"
    assert not tracker.should_stop
    assert tracker.update(30, 0.9) and tracker.bad_evals == 0
    assert not tracker.update(40, 0.95) and not tracker.update(50, 0.91)
    assert tracker.should_stop and tracker.best_step == 30
    again = BestTracker(patience=2)
    again.restore(tracker.state())
    assert (again.best_loss, again.best_step, again.bad_evals) == (0.9, 30, 2)
    assert not BestTracker(patience=0, bad_evals=99).should_stop, "patience 0 never stops"


def test_early_stopping_keeps_the_best_adapter(tiny_llama, chat_file, tmp_path):
    valid = write_jsonl(tmp_path / "valid.jsonl", [{"messages": m} for m in memorisable_conversations(3)])
    reporter = MemoryReporter()
    # A threshold no later evaluation can beat: the first is the best, and two more end the run.
    result = train(
        spec_for(
            tiny_llama,
            chat_file,
            tmp_path / "es",
            valid,
            epochs=10,
            eval_every=1,
            early_stopping_patience=2,
            early_stopping_threshold=50.0,
        ),
        reporter,
    )
    assert result.status == "succeeded" and result.stopped_early
    assert result.steps_done == 3 and result.best_step == 1
    assert [s for s, _ in reporter.points] == [1, 2, 3]
    assert [s for s, m in reporter.points if m.get("best")] == [1]
    kinds = [k for k, _ in reporter.events]
    assert "early_stop" in kinds and "best" in kinds
    kept = load_file(str(tmp_path / "es/adapter/adapter_model.safetensors"))
    best = load_file(str(tmp_path / "es/best-adapter/adapter_model.safetensors"))
    assert kept.keys() == best.keys() and all(torch.equal(kept[k], best[k]) for k in kept)


def test_keep_best_off_exports_the_last_step(tiny_llama, chat_file, tmp_path):
    valid = write_jsonl(tmp_path / "valid.jsonl", [{"messages": m} for m in memorisable_conversations(3)])
    reporter = MemoryReporter()
    result = train(
        spec_for(
            tiny_llama,
            chat_file,
            tmp_path / "last",
            valid,
            epochs=10,
            eval_every=1,
            early_stopping_patience=2,
            early_stopping_threshold=50.0,
            keep_best=False,
        ),
        reporter,
    )
    assert result.steps_done == 3 and "best" not in [k for k, _ in reporter.events]
    assert not (tmp_path / "last/best-adapter").exists()


def test_estimate_handles_pissa_on_meta(tiny_llama):
    cfg = TrainConfig(init_lora_weights="pissa")
    est = estimate(str(tiny_llama), cfg, n_examples=8, mean_tokens=20, device="cpu")
    model = load_base_model(str(tiny_llama), CPU)
    from worker.targets import linear_module_suffixes, resolve_targets

    targets = resolve_targets(linear_module_suffixes(model), cfg.target_preset, ())
    peft_model = get_peft_model(model, get_peft_config(dataclasses.replace(cfg, init_lora_weights="default"), targets))
    assert est.trainable_params == peft_model.get_nb_trainable_parameters()[0]
