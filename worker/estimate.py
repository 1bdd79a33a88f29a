"""Pre-flight estimate of a LoRA job: parameters, adapter size, memory, steps and time.

Pure functions. The PEFT model is built on the **meta device** from the model's config, so no
weight is read: the parameter counts are PEFT's own (`get_nb_trainable_parameters`), the rest
is arithmetic.

Memory model (MiB = 2**20 bytes; all figures are rough and meant to be within tens of percent,
not exact):

* ``base_weights``: every base parameter at the compute dtype (`cfg.precision`: bf16 / fp16 count 2 bytes,
  fp32 4; auto counts 2 on CUDA and on a CPU with native bf16, else 4).
  With ``cfg.qlora`` the Linear / Conv1D layers that bitsandbytes quantises (all of them but the
  output head, as `worker.modeling.load_base_model` does) are NF4: 0.5 byte per weight plus the
  double-quantised constants (one 8-bit absmax per block of 64 weights and one fp32 absmax per
  256 blocks), i.e. 0.5 + 1/64 + 4/16384 byte per weight; embeddings, norms, biases and the head
  stay at the compute dtype.
* ``lora_training``: LoRA parameters (A, B, DoRA magnitudes, trained biases) in fp32, their
  gradients, and AdamW's two moments: 16 bytes per trainable parameter.
* ``activations``: for one micro-batch of ``batch_size x max_seq_length`` tokens (the worst
  case: micro-batches are padded to their own longest example). Per token and per decoder layer
  a block keeps about ``6 h + 4 i`` values (h = hidden size, i = MLP width): norm outputs,
  q/k/v, the attention output, the residuals, and the MLP's gate/up/activation/product; the
  attention matrix itself is not stored (SDPA / flash kernels). With gradient checkpointing only
  each layer's input (h values) is kept, plus one layer's full set while it is recomputed.
  Values are at the compute dtype. With LoRA dropout > 0, each adapted layer also keeps its
  dropped-out input and the mask: 2 values per input feature of every adapted module (measured
  on SmolLM2-135M: without this term dropout 0.05 would be underestimated by a third).
* ``logits``: the vocabulary projection at the labelled positions only (the engine runs the LM head
  there): at the compute dtype, then three fp32 values (the upcast, the log-softmax, its gradient) per
  labelled token and vocabulary entry.
* ``overhead``: the runtime itself (Python + torch + transformers on CPU, measured ~400 MB; the CUDA context
  on a GPU). Converting the checkpoint while loading (fp32 file into bf16 or 4-bit) leaves nothing resident:
  each stored weight is read with pread() and freed once converted (worker.modeling.load_base_model).

Token counts: a micro-batch is padded to its own longest example, so when the training set's token profile is
known (`DataShape`) its longest example and mean labelled tokens per example are used; without it, the worst
case (every example max_seq_length tokens, every token labelled). Calibrated on SmolLM2-135M on a CPU
(tests/slow/test_estimate_calibration.py: LoRA bf16, LoRA fp32 and QLoRA within 25 % of the measured peak).

With ``cfg.devices`` = N the figures are per device: each rank holds the weights and a
1/N share of every micro-batch (``ceil(batch_size / N)`` rows). On a CPU worker the N processes
share the machine's memory, so every figure counts N times.

* ``sharding = "fsdp"`` (worker.sharding): on a GPU each rank keeps 1/N of the base, plus what FSDP gathers
  whole while it computes: the root unit (embeddings, final norm, LM head: not freed between forward and
  backward) and two decoder layers (the one running and the one prefetched), of which it held 1/N already.
  The adapter, its gradients and AdamW's moments are sharded too (1/N each). On a CPU worker every rank
  reads the whole base before sharding it, so the weights' peak stays N whole copies.

* DPO / ORPO: a micro-batch of pairs is ``2 x batch_size`` sequences (prompt + chosen, prompt +
  rejected), so activations and logits double. DPO adds the reference pass (the same model with
  the adapter off, without gradients): while it runs the policy's activations are held, so it
  adds one layer's values and its logits (``reference_pass``); in time it costs about a third of
  a forward + backward pass over the same tokens (`work_per_token`). DPO on top of a previous
  adapter (`start_from`) takes the reference log-probs once before training instead: one forward
  pass over every pair, and no extra memory while training.

* Reinforcement (GRPO, `worker.rft`): each step samples ``group_size`` answers to each of its prompts, token by
  token, then trains on them. The lengths are the prompts' (through the chat template with the generation
  prompt, kept to ``max_seq_length - max_answer_tokens``) and every answer is counted at ``max_answer_tokens``
  (the worst case: answers cut short are common early in a run). A micro-batch is ``batch_size x group_size``
  sequences of prompt + answer, so activations grow with the group. Memory adds ``kv_cache``: while sampling,
  the keys and values of every layer for those sequences at their full length (2 x layers x the key/value
  width per token, at the compute dtype); it is counted on top of the training pass's figures since the
  allocator keeps what sampling freed (a caching allocator on a GPU, a fragmented heap on a CPU). The logits
  are the whole sequence's at the compute dtype (`answer_logps` runs the head everywhere) plus the fp32 copies
  at the answer positions. The reference pass (beta > 0) runs before the policy's, without gradients, so its
  memory is below the policy's and adds none. Time, in the units of `work_per_token` (one token's forward +
  backward = 1; `reinforcement_step_work`): sampling costs a forward without gradients (REFERENCE_PASS_COST) over
  each prompt token (the prefill), then one decoding step per answer token, each new token of every sequence at
  once, worth a batched forward over `DECODE_STEP_TOKENS` + `DECODE_ROW_COST` x rows tokens (token-by-token
  decoding is far less efficient than a batched pass); then the policy's forward + backward over prompt + answer
  (1 per token) and, with beta > 0, the reference's forward (REFERENCE_PASS_COST). The decoding constants are
  measured on a CPU only, and no whole run has been compared yet (bench/README.md, "Reinforcement's estimate").
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from worker.config import TrainConfig
from worker.errors import InputError
from worker.memory_advice import fitting_tips
from worker.schedule import plan_steps

MIB = 2**20
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax/64 + fp32 absmax/16384
# The runtime: torch, transformers, peft and bitsandbytes imported on a CPU measure ~400 MB resident.
OVERHEAD_MB = {"cpu": 400.0, "cuda": 500.0}
# The labelled logits at the compute dtype, then in fp32: the upcast copy, the log-softmax and its gradient.
LOGIT_FP32_COPIES = 3


@dataclass(frozen=True)
class Estimate:
    trainable_params: int
    total_params: int
    trainable_percent: float
    adapter_mb: float
    memory_mb: float
    breakdown: dict[str, float]
    steps: int
    seconds: float | None
    fits: bool
    advice: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    memory_limit_mb: float | None = None
    lengths_known: bool = True  # False: the mean tokens per example is a guess from character counts
    # The advice again, each with the settings it changes ({"text", "changes"}): what the form's Apply sets.
    advice_changes: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. examples the max length cuts (jobs.training.services)
    # Where `seconds` comes from: "measured" (this model's finished jobs), "calibrated" (this machine's
    # measured speed and the work per token), or None when it is unknown.
    seconds_source: str | None = None
    # What memory_limit_mb is, as words that end "of the 24 GB ...": "this machine has", "one GPU of the
    # largest train worker has"; empty when not known.
    memory_limit_of: str = ""


@dataclass(frozen=True)
class _Shape:
    """What the memory formula needs from the model (counts from the meta-device PEFT model)."""

    total_params: int  # PEFT's all-parameter count (base + adapter)
    base_params: int
    quantizable_params: int  # Linear / Conv1D weights bitsandbytes would turn into NF4
    lora_ab_params: int  # lora_A + lora_B: proportional to the rank
    other_trainable: int  # DoRA magnitudes, trained biases: independent of the rank
    adapted_inputs: int  # sum of in_features over the adapted modules (LoRA dropout copies)
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    layer_params: int = 0  # the largest decoder layer's base parameters (one FSDP unit)
    root_params: int = 0  # the base parameters outside the decoder layers (FSDP's root unit)
    kv_width: int = 0  # keys (or values) per token and layer: key/value heads x head size (0: the hidden size)


def _config_sizes(config: Any) -> tuple[int, int, int, int]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", None) or text.n_embd)
    layers = int(getattr(text, "num_hidden_layers", None) or text.n_layer)
    vocab = int(text.vocab_size)
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    return hidden, int(inter), layers, vocab


def _kv_width(config: Any, hidden: int) -> int:
    """Keys per token and layer that a generation cache keeps: fewer than the hidden size with grouped queries."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None)
    if not heads:
        return hidden
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    return int(kv_heads) * int(head_dim)


# The settings that change the PEFT model's parameter counts; the others (alpha, dropout, rsLoRA, the init)
# change values or the formula only, so one built shape serves them all.
SHAPE_FIELDS = ("rank", "target_preset", "target_modules", "modules_to_save", "bias", "use_dora")
SHAPE_CACHE_SIZE = 64
# (path, stamp, shape settings) -> (_Shape, targets), least recent first
_shapes: OrderedDict[tuple[Any, ...], tuple[_Shape, tuple[str, ...]]] = OrderedDict()
_shapes_lock = threading.Lock()


def _meta_shape(model_path: str, cfg: TrainConfig) -> tuple[_Shape, list[str]]:
    """The model's shape under the adapter settings: built on the meta device once per model folder (path and
    config.json stamp) and shape settings, then kept, since building it takes tens of milliseconds."""
    from worker.modeling import config_stamp

    key = (str(model_path), config_stamp(model_path), *(getattr(cfg, name) for name in SHAPE_FIELDS))
    with _shapes_lock:
        found = _shapes.get(key)
        if found is not None:
            _shapes.move_to_end(key)
    if found is None:
        shape, targets = _build_meta_shape(model_path, cfg)
        found = (shape, tuple(targets))
        with _shapes_lock:
            _shapes[key] = found
            while len(_shapes) > SHAPE_CACHE_SIZE:
                _shapes.popitem(last=False)
    return found[0], list(found[1])


def _build_meta_shape(model_path: str, cfg: TrainConfig) -> tuple[_Shape, list[str]]:
    import torch
    from peft import get_peft_model
    from transformers.pytorch_utils import Conv1D

    from worker.modeling import get_peft_config, meta_model
    from worker.targets import (
        OUTPUT_LAYERS,
        linear_module_suffixes,
        resolve_modules_to_save,
        resolve_targets,
        saveable_modules,
    )

    config, model = meta_model(model_path)
    with torch.device("meta"):  # the LoRA layers too
        base_params = sum(p.numel() for p in model.parameters())
        quantizable = 0
        for path, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, Conv1D)) and path.split(".")[-1] not in OUTPUT_LAYERS:
                quantizable += module.weight.numel()
        targets = resolve_targets(linear_module_suffixes(model), cfg.target_preset, cfg.target_modules)
        resolve_modules_to_save(saveable_modules(model), cfg.modules_to_save)
        blocks = [
            m for m in model.modules() if type(m).__name__ in set(getattr(model, "_no_split_modules", None) or ())
        ]
        block_sizes = [sum(p.numel() for p in m.parameters()) for m in blocks] or [0]
        for p in model.parameters():
            p.requires_grad_(False)
        # The init changes values, not shapes; PiSSA's SVD cannot run on meta tensors.
        shape_cfg = dataclasses.replace(cfg, init_lora_weights="default")
        peft_model = get_peft_model(model, get_peft_config(shape_cfg, targets))
    trainable, total = peft_model.get_nb_trainable_parameters()
    from peft.tuners.lora import LoraLayer

    # PEFT types in_features as int | None (None: a layer it cannot size); every layer adapted here is sized
    adapted_inputs = sum(int(cast(int, m.in_features)) for m in peft_model.modules() if isinstance(m, LoraLayer))
    lora_ab = sum(
        p.numel() for n, p in peft_model.named_parameters() if p.requires_grad and (".lora_A." in n or ".lora_B." in n)
    )
    hidden, inter, layers, vocab = _config_sizes(config)
    shape = _Shape(
        total_params=int(total),
        base_params=int(base_params),
        quantizable_params=int(quantizable),
        lora_ab_params=int(lora_ab),
        other_trainable=int(trainable - lora_ab),
        adapted_inputs=adapted_inputs,
        hidden=hidden,
        intermediate=inter,
        layers=layers,
        vocab=vocab,
        layer_params=max(block_sizes),
        root_params=int(base_params - sum(block_sizes)),
        kv_width=_kv_width(config, hidden),
    )
    return shape, targets


REFERENCE_PASS_COST = 1 / 3  # a forward pass without gradients: about a third of forward + backward


def sequences_per_example(cfg: TrainConfig) -> int:
    """How many sequences one example becomes: two for a preference pair (chosen and rejected), a group of
    sampled answers for a prompt to reward."""
    if cfg.is_reinforcement:
        return cfg.group_size
    return 2 if cfg.is_preference else 1


# One decoding step (a new token for each of a micro-batch's R sequences) costs as much as a batched forward
# over STEP + ROW x R tokens: a fixed part (every weight read, every kernel launched, the sampler's Python, once a
# token whatever R) and a part per sequence (its thin products, attention over its cache, sampling over the
# vocabulary). CPU, measured (bench/README.md, "Reinforcement's estimate"): SmolLM2-135M, 48-token prompts, 48
# sampled tokens, one step of 8 rows took ~20x and of 32 rows ~11x a batched forward's time per token. CUDA: a
# guess from kernel launches (a small model's step is bound by them), not yet measured.
DECODE_STEP_TOKENS = {"cpu": 96, "cuda": 1024}
DECODE_ROW_COST = {"cpu": 8.0, "cuda": 2.0}


def reinforcement_step_work(cfg: TrainConfig, prompt_tokens: float, answer_tokens: float, device: str) -> float:
    """One reinforcement step's work in `work_per_token`'s units, from the step's prompt tokens and answer tokens
    summed over its sampled answers (a prompt counts once per answer): sampling (the prefill, then one forward
    over the micro-batch per new token), the policy's forward + backward and the reference's forward (beta > 0)."""
    rows = -(-cfg.batch_size // cfg.devices) * cfg.group_size  # sequences decoded together on one rank
    kind = "cpu" if device.startswith("cpu") else "cuda"
    # answer_tokens / rows decoding steps, each worth a forward over STEP + ROW x rows tokens
    per_answer_token = DECODE_STEP_TOKENS[kind] / rows + DECODE_ROW_COST[kind]
    sampling = (prompt_tokens + answer_tokens * per_answer_token) * REFERENCE_PASS_COST
    training = (prompt_tokens + answer_tokens) * (1 + (REFERENCE_PASS_COST if cfg.beta > 0 else 0.0))
    return sampling + training


def work_per_token(cfg: TrainConfig) -> float:
    """Training work per sequence token, in units of one forward + backward: DPO adds the reference pass.
    The engine's tokens_per_s counts tokens times this, so rates of all methods compare."""
    return 1 + REFERENCE_PASS_COST if cfg.method == "dpo" and not cfg.start_from else 1.0


# fp32 weight + gradient + two AdamW moments; the 8-bit optimizer keeps each moment in one byte.
TRAINING_BYTES_PER_PARAM = {"adamw": 16, "paged_adamw_8bit": 10}


def _trainable(shape: _Shape, cfg: TrainConfig, built_rank: int) -> int:
    return round(shape.lora_ab_params * cfg.rank / built_rank) + shape.other_trainable


def compute_bytes(cfg: TrainConfig, device: str) -> int:
    """Bytes per base weight and activation value: 2 for bf16 / fp16, 4 for fp32. Auto on a CPU is bf16 when
    this CPU multiplies bf16 natively (as `worker.modeling.choose_device` decides on the train worker, which
    is this machine or one like it), else fp32."""
    if cfg.precision == "fp32":
        return 4
    if cfg.precision == "auto" and device == "cpu":
        from worker.modeling import cpu_has_native_bf16

        return 2 if cpu_has_native_bf16() else 4
    return 2


@dataclass(frozen=True)
class DataShape:
    """What the memory needs from the training set, when its token profile is known: the longest example (a
    micro-batch is padded to its own longest, not to max_seq_length) and the mean labelled tokens per example
    (the engine runs the LM head on labelled positions only). None: the worst case, max_seq_length."""

    longest: int | None = None
    labelled: float | None = None


def _memory(
    shape: _Shape, cfg: TrainConfig, trainable: int, device: str, data: DataShape = DataShape()
) -> dict[str, float]:
    width = compute_bytes(cfg, device)
    if cfg.qlora:
        weights = (
            shape.quantizable_params * NF4_BYTES_PER_WEIGHT + (shape.base_params - shape.quantizable_params) * width
        )
    else:
        weights = shape.base_params * width
    rows = -(-cfg.batch_size // cfg.devices) * sequences_per_example(cfg)  # one rank's share of a micro-batch
    length = min(cfg.max_seq_length, data.longest or cfg.max_seq_length)
    if cfg.is_reinforcement:  # the prompt (its end, where longer) + an answer of max_answer_tokens
        room = max(1, cfg.max_seq_length - cfg.max_answer_tokens)
        length = min(room, data.longest or room) + cfg.max_answer_tokens
    tokens = rows * length
    # the head's labelled positions: the answers' for reinforcement, else the profile's mean (or every position)
    labelled: float = rows * min(length, data.labelled if data.labelled is not None else length)
    if cfg.is_reinforcement:
        labelled = rows * cfg.max_answer_tokens
    per_layer = 6 * shape.hidden + 4 * shape.intermediate
    if cfg.gradient_checkpointing:
        values = tokens * (shape.layers * shape.hidden + per_layer)
    else:
        values = tokens * shape.layers * per_layer
    if cfg.dropout > 0:
        kept_layers = 1 if cfg.gradient_checkpointing else shape.layers
        values += tokens * 2 * shape.adapted_inputs * kept_layers // shape.layers
    processes = cfg.devices if device == "cpu" else 1  # CPU ranks share this machine's memory
    shards = cfg.devices if cfg.sharding == "fsdp" and cfg.devices > 1 else 1
    if shards > 1 and device != "cpu":
        gathered = (shape.root_params + 2 * shape.layer_params) * width
        weights = weights / shards + gathered * (shards - 1) / shards
    breakdown = {
        "base_weights": processes * weights / MIB,
        "lora_training": processes * trainable * TRAINING_BYTES_PER_PARAM[cfg.optimizer] / shards / MIB,
        "activations": processes * values * width / MIB,
        "logits": processes * labelled * shape.vocab * (width + LOGIT_FP32_COPIES * 4) / MIB,
        "overhead": processes * OVERHEAD_MB["cpu" if device == "cpu" else "cuda"],
    }
    if cfg.method == "dpo" and not cfg.start_from:
        breakdown["reference_pass"] = processes * (tokens * per_layer * width + tokens * shape.vocab * 4) / MIB
    if cfg.is_reinforcement:
        # the head runs over every position at the compute dtype (the labelled term above is the answers' fp32)
        breakdown["logits"] += processes * (tokens - labelled) * shape.vocab * width / MIB
        kv = 2 * shape.layers * (shape.kv_width or shape.hidden)
        breakdown["kv_cache"] = processes * tokens * kv * width / MIB
    return breakdown


def _step_work(cfg: TrainConfig, n_examples: int, mean_tokens: float, device: str) -> float:
    """One optimizer step's work in `work_per_token`'s units; for reinforcement `mean_tokens` is a prompt's and
    every answer is counted at max_answer_tokens."""
    examples = min(n_examples, cfg.batch_size * cfg.grad_accum)
    if cfg.is_reinforcement:
        answers = examples * cfg.group_size
        prompt = min(mean_tokens, max(1, cfg.max_seq_length - cfg.max_answer_tokens))
        return reinforcement_step_work(cfg, answers * prompt, answers * cfg.max_answer_tokens, device)
    return examples * min(mean_tokens, cfg.max_seq_length) * sequences_per_example(cfg) * work_per_token(cfg)


def _resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise InputError("device", f"must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        from worker.modeling import choose_device

        return choose_device("auto").device
    return device


def estimate(
    model_path: str,
    cfg: TrainConfig,
    *,
    n_examples: int,
    mean_tokens: float,
    device: str = "cpu",
    tokens_per_s: float | None = None,
    memory_limit_mb: float | None = None,
    flops_per_s: float | None = None,
    data: DataShape = DataShape(),
    judge_paths: Sequence[str] = (),
) -> Estimate:
    """Estimate a job before it runs; reads the model's config only (never its weights). `judge_paths`: the judge
    models a reinforcement job loads beside its own (`judge_models` in the breakdown).

    `n_examples` and `mean_tokens` describe the tokenized training set (mean tokens per
    example; per side of a pair for DPO / ORPO; a prompt's for reinforcement); `tokens_per_s`, when known (a measured rate on this machine, e.g. a previous job's
    `tokens_per_s` metric, which counts non-padding tokens), gives `seconds`. Without it, `flops_per_s` (this
    machine's measured matmul rate, `worker.speed.matmul_flops`) does, through the work per token
    (`seconds_source` says which).
    """
    if n_examples < 1:
        raise InputError("n_examples", "the training set is empty")
    device = _resolve_device(device)
    shape, targets = _meta_shape(model_path, cfg)
    trainable = _trainable(shape, cfg, cfg.rank)
    breakdown = _memory(shape, cfg, trainable, device, data)
    judges = judges_mb(judge_paths, cfg, device)
    if judges:
        breakdown["judge_models"] = judges
    memory = sum(breakdown.values())
    _, steps = plan_steps(n_examples, cfg)
    seconds = None
    source = "measured" if tokens_per_s else None
    if not tokens_per_s and flops_per_s:
        from worker.speed import calibrated_tokens_per_s

        tokens_per_s = calibrated_tokens_per_s(
            flops_per_s,
            shape.base_params,
            qlora=cfg.qlora,
            device=device,
            gradient_checkpointing=cfg.gradient_checkpointing,
        )
        source = "calibrated"
    if tokens_per_s:
        seconds = steps * _step_work(cfg, n_examples, float(mean_tokens), device) / tokens_per_s
        if cfg.method == "dpo" and cfg.start_from:  # the reference log-probs, taken once before training
            seconds += n_examples * 2 * min(float(mean_tokens), cfg.max_seq_length) * REFERENCE_PASS_COST / tokens_per_s
    fits = memory_limit_mb is None or memory <= memory_limit_mb
    tips = (
        []
        if fits or memory_limit_mb is None
        else fitting_tips(
            cfg,
            lambda c: judges + sum(_memory(shape, c, _trainable(shape, c, cfg.rank), device, data).values()),
            float(memory_limit_mb),
        )
    )
    return Estimate(
        trainable_params=trainable,
        total_params=shape.total_params,
        trainable_percent=100.0 * trainable / shape.total_params,
        adapter_mb=trainable * 4 / MIB,
        memory_mb=memory,
        breakdown=breakdown,
        steps=steps,
        seconds=seconds,
        seconds_source=source,
        fits=fits,
        advice=[tip.text for tip in tips],
        advice_changes=[tip.to_json() for tip in tips],
        targets=targets,
        memory_limit_mb=memory_limit_mb,
    )


def judges_mb(paths: Sequence[str], cfg: TrainConfig, device: str) -> float:
    """The memory of judge models loaded beside the training model (each base once, at the compute dtype; their
    adapters, megabytes, are left out)."""
    from worker.modeling import meta_model

    total = 0
    for path in sorted(set(paths)):
        total += sum(p.numel() for p in meta_model(path)[1].parameters()) * compute_bytes(cfg, device)
    return total / MIB
