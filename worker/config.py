"""Training configuration: one frozen dataclass whose fields carry their own label, help and limits.

Each field is declared with `setting(...)`, whose metadata (as PEFT's `LoraConfig` keeps its help in
`field(metadata=...)`) is the one place a setting's label, help, limits and choices live: `__post_init__`
validates against it, and the web form, the REST API's OpenAPI schema and the OpenAI-style API read it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from worker.config_rules import check_rules
from worker.errors import ConfigError
from worker.presets import PRESETS
from worker.setting_choices import (
    BIAS_LABELS,
    INIT_LABELS,
    LR_SCHEDULER_LABELS,
    METHOD_LABELS,
    METHODS,
    OPTIMIZER_LABELS,
    PRECISION_LABELS,
    PRECISIONS,
    PREFERENCE_METHODS,
    REINFORCEMENT,
    SHARDING_LABELS,
    TARGET_LABELS,
)
from worker.setting_fields import check_fields, setting, value_type

__all__ = [
    "METHODS",
    "PRECISIONS",
    "PREFERENCE_METHODS",
    "REINFORCEMENT",
    "ConfigError",
    "GenerationConfig",
    "PRESETS",
    "TrainConfig",
    "TrainSpec",
    "preset_of",
    "setting",
    "setting_metadata",
]

MAX_DEVICES = 64  # one machine's processes; what a worker really has is checked where the job is launched
MANY_STEPS = 10_000_000
MAX_SEED = 2**32 - 1


def setting_metadata(cls: type | None = None) -> dict[str, Mapping[str, Any]]:
    """Each setting of `cls` (TrainConfig by default), in declaration order -> its metadata, `default` and
    `type` (bool, int, float, str or list)."""
    cls = cls or TrainConfig
    return {
        f.name: MappingProxyType({**f.metadata, "default": f.default, "type": value_type(f)})
        for f in dataclasses.fields(cls)
    }


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of one LoRA / QLoRA fine-tuning job."""

    # What is optimised: supervised (examples), dpo or orpo (preference pairs)
    method: str = setting(
        "supervised",
        label="Method",
        group="learn",
        plain="What it learns from",
        choices=METHOD_LABELS,
        openai="method.type",
        help="What the job learns from: examples with answers (supervised), preference pairs of a prompt with "
        "a chosen and a rejected answer (DPO, ORPO), or prompts whose sampled answers graders score (reinforcement).",
    )
    # DPO: the pull toward the reference (the base with the adapter off); ORPO: the weight of the odds-ratio term
    # next to the SFT loss (TRL's `beta`, the paper's lambda). TRL's default 0.1 for both.
    beta: float = setting(
        0.1,
        label="Beta (DPO) / lambda (ORPO)",
        group="learn",
        plain="Preference strength",
        min=0,
        max=100,
        openai="method.{method}.hyperparameters.beta",
        help="DPO: how strongly the model is held near the base (higher = closer); ORPO: the weight of the "
        "preference term; reinforcement: the weight of the pull back toward the start model (KL). 0.1 is usual.",
    )
    # Reinforcement (GRPO): answers sampled per prompt, how freely, and how long at most.
    group_size: int = setting(
        4,
        label="Group size (reinforcement)",
        group="learn",
        plain="Answers tried per prompt",
        min=2,
        max=64,
        unit="answers",
        openai="lora",
        help="Reinforcement: how many answers are sampled for each prompt and compared with each other; more finds "
        "better answers and costs time.",
    )
    sample_temperature: float = setting(
        1.0,
        label="Sampling temperature (reinforcement)",
        group="learn",
        plain="How varied the tries are",
        min=0,
        min_exclusive=True,
        max=2,
        openai="lora",
        help="Reinforcement: how different the tried answers are from each other; 1.0 samples as the model is.",
    )
    max_answer_tokens: int = setting(
        128,
        label="Max answer tokens (reinforcement)",
        group="learn",
        plain="Longest answer tried",
        min=1,
        max=4096,
        unit="tokens",
        openai="lora",
        help="Reinforcement: a tried answer stops after this many tokens (and is graded as it is).",
    )
    # The adapter's LoRA settings are taken over from that job; for DPO it is also the reference.
    start_from: str = setting(
        "",
        label="Start from",
        group="learn",
        plain="Continue from",
        job_id=True,
        help="A previous job's adapter to continue from (its rank and layers are kept); for DPO it is also the "
        "reference, e.g. DPO on top of an SFT job. Empty: a new adapter on the base.",
    )
    # LoRA
    rank: int = setting(
        16,
        label="Rank",
        group="adapter",
        plain="Adapter size",
        min=1,
        max=1024,
        openai="lora",
        help="The LoRA rank r, how many directions each adapted layer can learn; 8-16 is usual.",
    )
    alpha: float = setting(
        32,
        label="Alpha",
        group="adapter",
        plain="Adapter strength",
        min=0,
        min_exclusive=True,
        max=4096,
        openai="lora",
        help="How strongly the adapter's update counts: the scale is alpha / r; 2 x rank is usual.",
    )
    dropout: float = setting(
        0.05,
        label="Dropout",
        group="adapter",
        plain="Overfitting guard",
        min=0,
        max=0.9,
        openai="lora",
        help="The share of the adapter's inputs dropped at random while training, against overfitting.",
    )
    target_preset: str = setting(
        "attention",
        label="Target layers",
        group="adapter",
        plain="Layers to adapt",
        choices=TARGET_LABELS,
        openai="lora",
        help="Which layers of the base get an adapter.",
    )
    target_modules: tuple[str, ...] = setting(
        (),
        label="Custom modules",
        group="adapter",
        plain="Layer names",
        openai="lora",
        help="Comma-separated module names, e.g. q_proj, v_proj (only for Custom list).",
    )
    use_rslora: bool = setting(
        False,
        label="rsLoRA (alpha / sqrt(r))",
        group="adapter",
        plain="Keep large adapters learning",
        openai="lora",
        help="Scale the update by alpha / sqrt(r) instead of alpha / r, which keeps high ranks learning.",
    )
    use_dora: bool = setting(
        False,
        label="DoRA",
        group="adapter",
        plain="Learn size and direction apart (slower)",
        openai="lora",
        help="Weight-decomposed LoRA: learns each weight's size apart from its direction; slower, sometimes better.",
    )
    bias: str = setting(
        "none",
        label="Bias",
        group="adapter",
        plain="Also train bias terms",
        choices=BIAS_LABELS,
        openai="lora",
        help="Which bias terms train with the adapter: none, those of the adapted layers (lora_only), or all.",
    )
    init_lora_weights: str = setting(
        "default",
        label="LoRA init",
        group="adapter",
        plain="How a new adapter starts",
        choices=INIT_LABELS,
        openai="lora",
        help="How a new adapter starts: B zero and A random (default), Gaussian, or PiSSA (the base's principal "
        "singular vectors).",
    )
    modules_to_save: tuple[str, ...] = setting(
        (),
        label="Also train in full",
        group="adapter",
        openai="lora",
        help="Comma-separated whole modules trained in full and saved with the adapter, e.g. lm_head, "
        "embed_tokens (large).",
    )
    # Quantisation
    qlora: bool = setting(
        False,
        label="QLoRA (4-bit NF4 base)",
        group="memory",
        plain="Save memory: 4-bit base",
        openai="lora",
        help="Store the frozen base in 4 bits (NF4), for about a quarter of its memory; a little slower.",
    )
    gradient_checkpointing: bool = setting(
        False,
        label="Gradient checkpointing",
        group="memory",
        plain="Save memory: recompute as it goes (slower)",
        help="Recompute activations during the backward pass instead of keeping them: less memory, slower steps.",
    )
    # Optimisation
    epochs: float = setting(
        2,
        label="Epochs",
        group="amount",
        plain="Passes over the data",
        min=0,
        min_exclusive=True,
        max=100,
        unit="epochs",
        openai="hyperparameters.n_epochs",
        help="How many times training goes through the dataset; a fraction is allowed.",
    )
    learning_rate: float = setting(
        1e-3,
        label="Learning rate",
        group="amount",
        plain="Learning speed",
        min=0,
        min_exclusive=True,
        max=1,
        openai="hyperparameters.learning_rate_multiplier",
        help="How large each optimizer step is; LoRA usually takes 1e-4 to 2e-3.",
    )
    batch_size: int = setting(
        8,
        label="Batch size",
        group="memory",
        plain="Examples per batch",
        min=1,
        max=1024,
        unit="examples",
        openai="hyperparameters.batch_size",
        help="How many examples each forward pass takes (split across the devices).",
    )
    grad_accum: int = setting(
        1,
        label="Gradient accumulation",
        group="memory",
        plain="Batches per step",
        min=1,
        max=1024,
        unit="batches",
        help="How many batches are summed into one optimizer step; the effective batch is batch size x this.",
    )
    max_seq_length: int = setting(
        256,
        label="Max sequence length",
        group="memory",
        plain="Longest example kept (tokens)",
        min=16,
        max=131072,
        unit="tokens",
        help="Longer examples are cut to this many tokens.",
    )
    warmup_ratio: float = setting(
        0.03,
        label="Warmup ratio",
        group="amount",
        plain="Warm-up share",
        min=0,
        max=0.5,
        help="The share of the steps over which the learning rate rises from 0 to its full value.",
    )
    lr_scheduler: str = setting(
        "linear",
        label="Lr scheduler",
        group="amount",
        plain="How the learning speed falls",
        choices=LR_SCHEDULER_LABELS,
        help="How the learning rate falls after the warmup: linearly, along a cosine, or not at all (constant).",
    )
    weight_decay: float = setting(
        0.0,
        label="Weight decay",
        group="amount",
        plain="Pull toward zero",
        min=0,
        max=1,
        help="How much the adapter's weights are pulled toward zero at each step (AdamW's decoupled decay).",
    )
    max_grad_norm: float = setting(
        1.0,
        label="Gradient clipping (max norm, 0 = off)",
        group="amount",
        plain="Largest step size (0 = no limit)",
        min=0,
        max=1000,
        help="Gradients larger than this norm are scaled down to it, against unstable steps; 0 turns it off.",
    )
    max_steps: int = setting(
        0,
        label="Max steps",
        group="amount",
        plain="Stop after this many steps (0 = no limit)",
        min=0,
        max=MANY_STEPS,
        unit="steps",
        help="Stop after this many optimizer steps; 0 = run the epochs above.",
    )
    seed: int = setting(
        42,
        label="Seed",
        group="amount",
        plain="Random seed",
        min=0,
        max=MAX_SEED,
        openai="seed",
        help="The random seed of the adapter's start and the data order; the same seed repeats a run.",
    )
    optimizer: str = setting(
        "adamw",
        label="Optimizer",
        group="amount",
        plain="Update rule",
        choices=OPTIMIZER_LABELS,
        help="AdamW, or paged 8-bit AdamW (bitsandbytes, CUDA only) whose state takes about a quarter of the memory.",
    )
    packing: bool = setting(
        False,
        label="Packing (no padding; examples kept apart by the mask)",
        group="memory",
        plain="Fill each row with several examples",
        help="Put several examples in each row, attention kept inside each (a block-diagonal mask), so no time "
        "goes to padding.",
    )
    # Liger's Triton kernels need CUDA and the liger-kernel package on the GPU workers (requirements-gpu.txt);
    # worker.kernels refuses otherwise.
    liger: bool = setting(
        False,
        label="Liger kernels (CUDA)",
        group="memory",
        plain="Faster GPU kernels",
        openai="lora",
        help="Liger's fused Triton kernels (RMSNorm, SwiGLU, fused linear cross-entropy): less memory, often "
        "faster; GPU workers only.",
    )
    # Data parallel: every micro-batch is split across the processes, so the global batch and the learning-rate
    # plan stay those of one device.
    devices: int = setting(
        1,
        label="Devices",
        group="memory",
        plain="Devices to train on",
        min=1,
        max=MAX_DEVICES,
        unit="devices",
        openai="lora",
        help="Train on this many GPUs (or CPU processes) at once; the batch is split across them, so results "
        "match one device.",
    )
    # fsdp shards the frozen base (and the adapter and its optimizer state) with PyTorch FSDP, so a model too
    # large for one device can train; none gives every device a whole copy. The same losses either way.
    sharding: str = setting(
        "none",
        label="Sharding (with several devices)",
        group="memory",
        plain="Split the model across devices",
        choices=SHARDING_LABELS,
        openai="lora",
        help="FSDP stores 1/N of the frozen base on each of N devices; same results, more communication. Not "
        "with QLoRA or PiSSA.",
    )
    # auto: bf16 on CUDA devices that support it and on CPUs with native bf16, fp32 elsewhere (worker.modeling).
    precision: str = setting(
        "auto",
        label="Base precision",
        group="memory",
        plain="Number format of the base",
        choices=PRECISION_LABELS,
        openai="lora",
        help="The dtype the frozen base is stored and computed in; LoRA weights and the optimizer stay fp32.",
    )
    # Checkpoints and evaluation
    save_every: int = setting(
        50,
        label="Checkpoint every N steps",
        group="checks",
        plain="Save progress every N steps",
        min=1,
        max=MANY_STEPS,
        unit="steps",
        help="Save a checkpoint, which a stopped job resumes from, every this many optimizer steps.",
    )
    eval_every: int = setting(
        0,
        label="Evaluate every N steps",
        group="checks",
        plain="Check progress every N steps",
        min=0,
        max=MANY_STEPS,
        unit="steps",
        help="Measure the validation loss every this many steps; 0: about ten evaluations per run.",
    )
    final_eval: bool = setting(
        True,
        label="Compare base and adapted at the end",
        group="checks",
        help="Generate the held-out answers of both the base and the adapted model and score them.",
    )
    early_stopping_patience: int = setting(
        0,
        label="Early stopping patience",
        group="checks",
        plain="Stop after N checks without progress (0 = off)",
        min=0,
        max=1000,
        unit="evaluations",
        help="Stop after this many evaluations without a better eval loss; 0 = off.",
    )
    early_stopping_threshold: float = setting(
        0.0,
        label="Early stopping threshold",
        group="checks",
        plain="Smallest progress that counts",
        min=0,
        max=100,
        help="How much lower than the best an eval loss must be to count as better.",
    )
    keep_best: bool = setting(
        True,
        label="Keep the best checkpoint",
        group="checks",
        help="Export the adapter with the lowest eval loss, not the last one.",
    )

    def __post_init__(self) -> None:
        check_fields(self)  # each field against its own metadata: type, choices, range
        check_rules(self)  # the rules between settings

    @property
    def is_preference(self) -> bool:
        """True for the methods that train on preference pairs (chosen vs rejected answers)."""
        return self.method in PREFERENCE_METHODS

    @property
    def is_reinforcement(self) -> bool:
        """True for reinforcement fine-tuning: prompts, answers sampled and graded."""
        return self.method == REINFORCEMENT

    @property
    def scaling(self) -> float:
        """The LoRA scale applied to B A x: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["modules_to_save"] = list(self.modules_to_save)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from JSON-like data; unknown keys are an error naming the key.

        `preset` (quick / balanced / quality) fills the values it defines; keys given next to it win.
        """
        if not isinstance(data, dict):
            raise ConfigError("config", f"must be an object, got {type(data).__name__}")
        if "preset" in data:
            data = dict(data)
            preset = data.pop("preset")
            if preset not in PRESETS:
                raise ConfigError("preset", f"must be one of {', '.join(PRESETS)}, got {preset!r}")
            data = {**PRESETS[preset], **data}
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(str(key), f"unknown field; allowed: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def problems(cls, data: dict[str, Any]) -> list[ConfigError]:
        """Every problem of `data` at once, where `from_dict` stops at the first: each field found wrong is
        put back to its default and the rest is checked again (so a form shows all its errors together)."""
        found: list[ConfigError] = []
        data = dict(data) if isinstance(data, dict) else data
        for _ in range(len(dataclasses.fields(cls)) + 2):
            try:
                cls.from_dict(data)
                return found
            except ConfigError as exc:
                found.append(exc)
                if not isinstance(data, dict) or exc.field not in data:
                    return found  # a rule between fields broken by a default: nothing more to take back
                data.pop(exc.field)
        return found


def preset_of(config: TrainConfig) -> str:
    """The name of the preset whose every value `config` has, or "custom"."""
    for name, values in PRESETS.items():
        if all(getattr(config, key) == value for key, value in values.items()):
            return name
    return "custom"


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings for one chat answer."""

    max_new_tokens: int = setting(
        128, label="Max new tokens", min=1, max=4096, unit="tokens", help="The answer stops after this many tokens."
    )
    temperature: float = setting(
        0.0,
        label="Temperature",
        min=0,
        max=5,
        help="How random the answer is; 0 always picks the likeliest token (greedy).",
    )
    top_p: float = setting(
        1.0,
        label="Top p",
        min=0,
        min_exclusive=True,
        max=1,
        help="Sample only from the likeliest tokens that together hold this share of the probability.",
    )
    seed: int = setting(
        0, label="Seed", min=0, max=MAX_SEED, help="The random seed of the sampling; the same seed repeats an answer."
    )
    system_prompt: str = setting(
        "", label="System prompt", help="Instructions given to the model before the conversation."
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class TrainSpec:
    """Everything the engine needs for one job: paths and the validated config."""

    base_model_path: str
    dataset_path: str
    output_dir: str
    config: TrainConfig = field(default_factory=TrainConfig)
    eval_dataset_path: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    start_adapter_dir: str | None = None  # the adapter of config.start_from: the start and DPO's reference
    grader: dict[str, Any] | None = None  # reinforcement: the grader, in OpenAI's shape (worker.graders.spec)
    grader_limits: dict[str, Any] | None = None  # its python parts' limits (graders.python_sandbox.SandboxLimits)
    grader_judges: dict[str, dict[str, Any]] | None = None  # its judge models by name (worker.judges.LocalJudge)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        data = dict(data)
        data["config"] = TrainConfig.from_dict(data.get("config", {}))
        return cls(**data)
