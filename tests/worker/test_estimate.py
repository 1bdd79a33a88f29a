"""Pre-flight estimate: counts equal PEFT's own on the real model; memory arithmetic; rsLoRA; DoRA."""

import json
import math
import shutil

import pytest

from worker.config import TrainConfig, TrainSpec
from worker.engine import train
from worker.estimate import MIB, NF4_BYTES_PER_WEIGHT, OVERHEAD_MB, DataShape, estimate
from worker.modeling import build_peft_model, choose_device, load_base_model
from worker.reporting import MemoryReporter
from worker.schedule import plan_steps

VARIANTS = {"plain": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True}}


def real_counts(model_dir, cfg):
    model = load_base_model(str(model_dir), choose_device("cpu"), cfg)
    peft_model, targets = build_peft_model(model, cfg)
    return peft_model.get_nb_trainable_parameters(), targets


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("preset", ["attention", "all_linear"])
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_trainable_params_equal_peft_count_on_the_real_model(arch, preset, variant, request):
    model_dir = request.getfixturevalue(arch)
    cfg = TrainConfig(rank=8, alpha=16, target_preset=preset, **VARIANTS[variant])
    (trainable, total), targets = real_counts(model_dir, cfg)
    est = estimate(str(model_dir), cfg, n_examples=10, mean_tokens=40)
    assert est.trainable_params == trainable
    assert est.total_params == total
    assert est.targets == targets
    assert est.trainable_percent == pytest.approx(100 * trainable / total)
    assert est.adapter_mb == pytest.approx(trainable * 4 / MIB)


def test_dora_adds_one_magnitude_per_output_feature(tiny_llama):
    plain = estimate(str(tiny_llama), TrainConfig(rank=8), n_examples=4, mean_tokens=20)
    dora = estimate(str(tiny_llama), TrainConfig(rank=8, use_dora=True), n_examples=4, mean_tokens=20)
    # Tiny Llama attention: 2 layers x (q 64 + k 32 + v 32 + o 64) output features.
    assert dora.trainable_params - plain.trainable_params == 2 * (64 + 32 + 32 + 64)


def test_estimate_reads_no_weights(tiny_llama, tmp_path):
    """Only config.json is needed: the model is built on the meta device."""
    shutil.copy(tiny_llama / "config.json", tmp_path / "config.json")
    with_weights = estimate(str(tiny_llama), TrainConfig(), n_examples=8, mean_tokens=30)
    config_only = estimate(str(tmp_path), TrainConfig(), n_examples=8, mean_tokens=30)
    assert config_only == with_weights


def test_memory_breakdown_follows_the_documented_formula(tiny_llama):
    # Tiny Llama: h=64, i=128, 2 layers, vocab = len(tokenizer).
    shape = dict(rank=8, batch_size=4, max_seq_length=32)
    cfg = TrainConfig(**shape, dropout=0.0)
    est = estimate(str(tiny_llama), cfg, n_examples=10, mean_tokens=20)
    b = est.breakdown
    assert set(b) == {"base_weights", "lora_training", "activations", "logits", "overhead"}
    assert est.memory_mb == pytest.approx(sum(b.values()))
    base_params = est.total_params - est.trainable_params
    assert b["base_weights"] == pytest.approx(base_params * 4 / MIB)  # fp32 on CPU
    assert b["lora_training"] == pytest.approx(est.trainable_params * 16 / MIB)  # p + grad + 2 AdamW, fp32
    tokens = 4 * 32
    assert b["activations"] == pytest.approx(tokens * 2 * (6 * 64 + 4 * 128) * 4 / MIB)
    # Every position labelled (no token profile): fp32 logits + upcast, log-softmax and gradient.
    assert b["logits"] == pytest.approx(tokens * est_vocab(tiny_llama) * (4 + 3 * 4) / MIB)
    assert b["overhead"] == OVERHEAD_MB["cpu"]  # fp32 file, fp32 compute: no conversion left resident

    # With the token profile: micro-batches padded to the longest example, the head on labelled tokens only.
    known = estimate(str(tiny_llama), cfg, n_examples=10, mean_tokens=20, data=DataShape(longest=16, labelled=5))
    assert known.breakdown["activations"] == pytest.approx(b["activations"] / 2)
    assert known.breakdown["logits"] == pytest.approx(4 * 5 * est_vocab(tiny_llama) * 16 / MIB)
    # Converting the fp32 file to bf16 or 4-bit while loading leaves nothing resident (each weight read with
    # pread() and freed once converted): the overhead is the runtime alone.
    for converted in (dict(precision="bf16"), dict(qlora=True)):
        other = estimate(str(tiny_llama), TrainConfig(**shape, dropout=0.0, **converted), n_examples=10, mean_tokens=20)
        assert other.breakdown["overhead"] == OVERHEAD_MB["cpu"]

    # LoRA dropout keeps the dropped-out input and its mask of q, k, v, o (64 features each) per layer.
    dropped = estimate(str(tiny_llama), TrainConfig(**shape, dropout=0.1), n_examples=10, mean_tokens=20)
    assert dropped.breakdown["activations"] - b["activations"] == pytest.approx(tokens * 2 * (2 * 4 * 64) * 4 / MIB)

    ckpt = estimate(
        str(tiny_llama), TrainConfig(**shape, dropout=0.0, gradient_checkpointing=True), n_examples=10, mean_tokens=20
    )
    assert ckpt.breakdown["activations"] == pytest.approx(tokens * (2 * 64 + 6 * 64 + 4 * 128) * 4 / MIB)
    assert ckpt.breakdown["activations"] < b["activations"]

    cuda = estimate(str(tiny_llama), cfg, n_examples=10, mean_tokens=20, device="cuda")
    assert cuda.breakdown["base_weights"] == pytest.approx(b["base_weights"] / 2)  # bf16
    assert cuda.breakdown["activations"] == pytest.approx(b["activations"] / 2)
    assert cuda.breakdown["lora_training"] == b["lora_training"]  # adapters stay fp32


def est_vocab(model_dir):
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


def test_qlora_weights_are_about_half_a_byte_per_linear_weight(tiny_llama):
    plain = estimate(str(tiny_llama), TrainConfig(), n_examples=8, mean_tokens=20)
    q = estimate(str(tiny_llama), TrainConfig(qlora=True), n_examples=8, mean_tokens=20)
    # Linear weights outside the head: 2 layers x (q 64x64 + k 32x64 + v 32x64 + o 64x64 + 3 MLP 64x128).
    linear = 2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 64 * 128)
    saved = (plain.breakdown["base_weights"] - q.breakdown["base_weights"]) * MIB
    assert saved == pytest.approx(linear * (4 - NF4_BYTES_PER_WEIGHT))
    assert 0.51 < NF4_BYTES_PER_WEIGHT < 0.52
    assert q.trainable_params == plain.trainable_params


def test_steps_seconds_and_fits(tiny_llama):
    cfg = TrainConfig(batch_size=4, grad_accum=2, epochs=3)
    est = estimate(str(tiny_llama), cfg, n_examples=50, mean_tokens=100)
    assert est.steps == plan_steps(50, cfg)[1] == 21
    assert est.seconds is None and est.fits and est.advice == []
    timed = estimate(str(tiny_llama), cfg, n_examples=50, mean_tokens=100, tokens_per_s=400)
    assert timed.seconds == pytest.approx(21 * 8 * 100 / 400)
    capped = estimate(
        str(tiny_llama), replace_cfg(cfg, max_seq_length=64), n_examples=50, mean_tokens=100, tokens_per_s=400
    )
    assert capped.seconds == pytest.approx(21 * 8 * 64 / 400), "examples are truncated to max_seq_length"

    roomy = estimate(str(tiny_llama), cfg, n_examples=50, mean_tokens=100, memory_limit_mb=est.memory_mb + 1)
    assert roomy.fits and roomy.advice == []


def replace_cfg(cfg, **over):
    return TrainConfig(**{**cfg.to_dict(), **over})


def test_advice_when_it_does_not_fit(tiny_llama):
    cfg = TrainConfig(batch_size=64, max_seq_length=1024)
    est = estimate(str(tiny_llama), cfg, n_examples=500, mean_tokens=300)
    small = estimate(str(tiny_llama), replace_cfg(cfg, batch_size=8, grad_accum=8), n_examples=500, mean_tokens=300)
    tight = estimate(str(tiny_llama), cfg, n_examples=500, mean_tokens=300, memory_limit_mb=small.memory_mb + 1)
    assert not tight.fits and tight.memory_mb == est.memory_mb
    assert tight.advice[0].startswith("batch_size 8 with grad_accum 8 (same effective batch)")
    assert any(a.startswith("max_seq_length") for a in tight.advice)

    hopeless = estimate(str(tiny_llama), cfg, n_examples=500, mean_tokens=300, memory_limit_mb=1)
    assert not hopeless.fits and len(hopeless.advice) == 1
    assert hopeless.advice[0].startswith("no single change is enough") and "still does not fit" in hopeless.advice[0]
    assert hopeless.advice_changes[0]["changes"]["batch_size"] == 1


def test_each_advice_carries_the_settings_that_make_it_fit(tiny_llama):
    """The form's Apply button sets `changes`: applied, each one must give a job that fits."""
    cfg = TrainConfig(batch_size=64, max_seq_length=1024)
    small = estimate(str(tiny_llama), replace_cfg(cfg, batch_size=8, grad_accum=8), n_examples=500, mean_tokens=300)
    tight = estimate(str(tiny_llama), cfg, n_examples=500, mean_tokens=300, memory_limit_mb=small.memory_mb + 1)
    assert [a["text"] for a in tight.advice_changes] == tight.advice and len(tight.advice) >= 2
    assert tight.advice_changes[0]["changes"] == {"batch_size": 8, "grad_accum": 8}
    for item in tight.advice_changes:
        assert item["changes"], item
        applied = estimate(
            str(tiny_llama),
            replace_cfg(cfg, **item["changes"]),
            n_examples=500,
            mean_tokens=300,
            memory_limit_mb=tight.memory_limit_mb,
        )
        assert applied.fits, item


def test_rslora_scaling_is_alpha_over_sqrt_rank(tiny_llama):
    cfg = TrainConfig(rank=8, alpha=16, use_rslora=True)
    model, _ = build_peft_model(load_base_model(str(tiny_llama), choose_device("cpu"), cfg), cfg)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(16 / math.sqrt(8)) == pytest.approx(cfg.scaling)
    plain = TrainConfig(rank=8, alpha=16)
    model, _ = build_peft_model(load_base_model(str(tiny_llama), choose_device("cpu"), plain), plain)
    assert model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(2.0)


def test_dora_trains(tiny_llama, chat_file, tmp_path):
    reporter = MemoryReporter()
    cfg = TrainConfig(
        batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, rank=8, alpha=16, use_dora=True, max_steps=8, dropout=0.0
    )
    result = train(TrainSpec(str(tiny_llama), str(chat_file), str(tmp_path / "dora"), cfg, device="cpu"), reporter)
    losses = reporter.losses()
    assert result.status == "succeeded" and sorted(losses) == list(range(1, 9))
    assert losses[8] < 0.7 * losses[1], losses
    magnitudes = [n for n, p in result.model.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]
    assert magnitudes, "DoRA adds trainable magnitude vectors"


def test_devices_split_the_micro_batch_and_cpu_ranks_share_memory(tiny_llama):
    one = estimate(str(tiny_llama), TrainConfig(batch_size=8), n_examples=100, mean_tokens=50, device="cpu")
    two = estimate(str(tiny_llama), TrainConfig(batch_size=8, devices=2), n_examples=100, mean_tokens=50, device="cpu")
    half = estimate(str(tiny_llama), TrainConfig(batch_size=4), n_examples=100, mean_tokens=50, device="cpu")
    # two CPU processes, each with the weights and half of every micro-batch, on one machine's memory
    for key in one.breakdown:
        assert two.breakdown[key] == pytest.approx(2 * half.breakdown[key]), key
    assert two.steps == one.steps, "the global batch, so the plan, is the same"
    advice = estimate(
        str(tiny_llama),
        TrainConfig(batch_size=8, devices=2),
        n_examples=100,
        mean_tokens=50,
        device="cpu",
        memory_limit_mb=two.memory_mb - 1,
    ).advice
    assert not any("batch_size 1 " in line for line in advice), "never fewer examples than devices"
    from worker.memory_advice import oom_suggestion

    assert "batch_size" not in oom_suggestion(TrainConfig(batch_size=2, devices=2))
    assert oom_suggestion(TrainConfig(batch_size=8, devices=2))["batch_size"] == 4


def test_fsdp_shards_the_base_per_gpu_but_not_the_cpu_load_peak(tiny_llama, tmp_path):
    """sharding=fsdp on 4 GPUs: each holds a quarter of the base plus what FSDP gathers (the root unit and
    two decoder layers), and a quarter of the adapter's training state; on a CPU worker every rank reads the
    whole base first, so its weights' peak is unchanged. A 16-layer shape, where sharding pays off."""
    import json
    import shutil

    deep = tmp_path / "deep"
    deep.mkdir()
    config = json.loads((tiny_llama / "config.json").read_text())
    (deep / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 16}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (tiny_llama / name).exists():
            shutil.copy(tiny_llama / name, deep / name)

    def est(device, **cfg):
        return estimate(
            str(deep), TrainConfig(batch_size=8, devices=4, **cfg), n_examples=100, mean_tokens=50, device=device
        )

    whole, sharded = est("cuda"), est("cuda", sharding="fsdp")
    assert sharded.breakdown["base_weights"] < whole.breakdown["base_weights"] / 2
    assert sharded.breakdown["base_weights"] > whole.breakdown["base_weights"] / 4, "gathered units count too"
    assert sharded.breakdown["lora_training"] == pytest.approx(whole.breakdown["lora_training"] / 4)
    assert sharded.breakdown["activations"] == whole.breakdown["activations"], "the micro-batch split is the same"
    assert sharded.memory_mb < whole.memory_mb
    on_cpu, on_cpu_sharded = est("cpu"), est("cpu", sharding="fsdp")
    assert on_cpu_sharded.breakdown["base_weights"] == on_cpu.breakdown["base_weights"]


def test_reinforcement_counts_sampling_in_time_and_memory(tiny_llama):
    """A reinforcement step samples group_size answers of up to max_answer_tokens per prompt, token by token, then
    trains on prompt + answer: its time and memory grow with both, and differ from the same job supervised."""
    shape = dict(batch_size=2, grad_accum=1, epochs=1, max_seq_length=96, dropout=0.0)

    def rft(**over):
        cfg = TrainConfig(**{**shape, "method": "reinforcement", "group_size": 4, "max_answer_tokens": 32, **over})
        return estimate(str(tiny_llama), cfg, n_examples=8, mean_tokens=20, tokens_per_s=1000, data=DataShape(20, 0))

    base = rft()
    supervised = estimate(
        str(tiny_llama), TrainConfig(**shape), n_examples=8, mean_tokens=20, tokens_per_s=1000, data=DataShape(20, 0)
    )
    assert base.steps == supervised.steps == 4
    # Per step 2 prompts x 4 answers = 8 rows decoded together: each decoding step is worth a forward over
    # 96 + 8 x 8 tokens on a CPU, i.e. 96 / 8 + 8 = 20 per answer token; then the policy's forward + backward and
    # the reference's forward (beta 0.1).
    answers, prompt, answer = 8, 20, 32
    work = answers * (prompt + answer * 20) / 3 + answers * (prompt + answer) * (1 + 1 / 3)
    assert base.seconds == pytest.approx(4 * work / 1000)
    assert supervised.seconds == pytest.approx(4 * 2 * 20 / 1000)
    assert base.seconds > 10 * supervised.seconds
    assert rft(group_size=8).seconds > base.seconds
    assert rft(max_answer_tokens=64).seconds > base.seconds
    assert rft(beta=0.0).seconds < base.seconds  # no reference pass

    # Memory: the 8 rows of prompt + answer (20 + 32 tokens) in the training pass, and the sampling's cache of
    # keys and values (2 x 2 layers x 2 key/value heads x 16 per token, fp32 on this CPU).
    tokens = answers * (prompt + answer)
    assert base.breakdown["kv_cache"] == pytest.approx(tokens * 2 * 2 * 32 * 4 / MIB)
    assert base.breakdown["activations"] == pytest.approx(tokens * 2 * (6 * 64 + 4 * 128) * 4 / MIB)
    vocab = est_vocab(tiny_llama)
    assert base.breakdown["logits"] == pytest.approx((tokens * vocab * 4 + answers * answer * vocab * 3 * 4) / MIB), (
        "the head over every position, its fp32 copies at the answers"
    )
    assert "kv_cache" not in supervised.breakdown and base.memory_mb > supervised.memory_mb
    assert rft(group_size=8).memory_mb > base.memory_mb
    assert rft(max_answer_tokens=64).memory_mb > base.memory_mb
    # A prompt longer than the room the answers leave keeps its end: the sequence stays within max_seq_length.
    long_prompts = estimate(
        str(tiny_llama),
        TrainConfig(**shape, method="reinforcement", group_size=4, max_answer_tokens=32),
        n_examples=8,
        mean_tokens=500,
        data=DataShape(500, 0),
    )
    assert long_prompts.breakdown["kv_cache"] == pytest.approx(answers * 96 * 2 * 2 * 32 * 4 / MIB)
