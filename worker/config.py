"""Training configuration: one frozen dataclass whose validation is the single source of truth.

The web form, the REST API and the OpenAI-style API all build a `TrainConfig`; whatever they
accept or refuse is decided here, in `__post_init__`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

TARGET_PRESETS = ("attention", "mlp", "all_linear", "custom")
LR_SCHEDULERS = ("linear", "cosine", "constant")
BIAS_CHOICES = ("none", "lora_only", "all")
INIT_CHOICES = ("default", "gaussian", "pissa")
OPTIMIZERS = ("adamw", "paged_adamw_8bit")
SHARDING = ("none", "fsdp")  # none: every device holds the whole base; fsdp: the base is sharded across them
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # the frozen base's dtype; LoRA weights and optimizer stay fp32
MAX_DEVICES = 64  # one machine's processes; what a worker really has is checked where the job is launched
METHODS = ("supervised", "dpo", "orpo")  # supervised: next-token loss; dpo / orpo: preference pairs
PREFERENCE_METHODS = ("dpo", "orpo")
MODULE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


class ConfigError(ValueError):
    """A configuration value is not allowed; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _check_range(name: str, value: Any, *, low: float, high: float, integer: bool = False,
                 low_inclusive: bool = True) -> None:
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(name, f"must be {kind} (you gave {value!r})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number (you gave {value!r})")
    too_low = value < low if low_inclusive else value <= low
    if too_low or value > high:
        if low_inclusive:
            raise ConfigError(name, f"must be between {low:g} and {high:g} (you gave {value!r})")
        raise ConfigError(name, f"must be more than {low:g} and at most {high:g} (you gave {value!r})")


def _module_names(name: str, modules: Any) -> tuple[str, ...]:
    """A list of module names from a list or a comma/newline separated string."""
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.replace("\n", ",").split(",") if m.strip()]
    elif not isinstance(modules, (list, tuple)):
        raise ConfigError(name, f"must be a list of module names, got {modules!r}")
    for m in modules:
        if not isinstance(m, str) or not MODULE_NAME_RE.match(m):
            raise ConfigError(name, f"{m!r} is not a valid module name (letters, digits, _)")
    return tuple(modules)


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of one LoRA / QLoRA fine-tuning job."""

    # What is optimised: supervised (examples), dpo or orpo (preference pairs)
    method: str = "supervised"
    # DPO: beta, the strength of the pull toward the reference (the base with the adapter off); higher keeps the
    # adapted model closer to it. ORPO: the weight of the odds-ratio term next to the SFT loss (TRL's `beta`, the
    # paper's lambda). TRL's default 0.1 for both.
    beta: float = 0.1
    # The id of a previous job of the same user whose adapter this one starts from (its LoRA settings are taken
    # over); for DPO that adapter is also the reference ("DPO on top of job X"). Empty: a fresh adapter on the base.
    start_from: str = ""
    # LoRA
    rank: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_preset: str = "attention"
    target_modules: tuple[str, ...] = ()
    use_rslora: bool = False
    use_dora: bool = False
    bias: str = "none"
    init_lora_weights: str = "default"  # default (B = 0, A Kaiming) | gaussian | pissa (principal singular vectors)
    modules_to_save: tuple[str, ...] = ()  # trained in full and saved with the adapter, e.g. lm_head
    # Quantisation
    qlora: bool = False
    gradient_checkpointing: bool = False
    # Optimisation
    epochs: float = 2
    learning_rate: float = 1e-3
    batch_size: int = 8
    grad_accum: int = 1
    max_seq_length: int = 256
    warmup_ratio: float = 0.03
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int = 0  # 0: run `epochs` epochs
    seed: int = 42
    optimizer: str = "adamw"  # adamw | paged_adamw_8bit (bitsandbytes, CUDA only)
    packing: bool = False  # several examples per row, attention kept inside each (block-diagonal mask)
    # Liger's Triton kernels (RMSNorm, SwiGLU, fused linear cross-entropy): CUDA only, and the
    # liger-kernel package on the GPU workers (requirements-gpu.txt); worker.kernels refuses otherwise.
    liger: bool = False
    # Data parallel over this many processes (GPUs, or CPU processes sharing the cores): every micro-batch
    # is split across them, so the global batch and the learning-rate plan stay those of one device.
    devices: int = 1
    # With devices > 1: "fsdp" shards the frozen base (and the adapter and its optimizer state) across the
    # devices with PyTorch FSDP, so each holds 1/devices of it and a model too large for one device can train;
    # "none" gives every device a whole copy (plain data parallel). The same losses either way.
    sharding: str = "none"
    # The dtype the frozen base is stored and computed in (LoRA weights and optimizer state stay fp32): auto is
    # bf16 on CUDA devices that support it and on CPUs with native bf16, fp32 elsewhere (worker.modeling).
    precision: str = "auto"
    # Checkpoints and evaluation
    save_every: int = 50
    eval_every: int = 0  # 0: about ten evaluations per run (when there is a validation set)
    final_eval: bool = True  # base vs adapted on the validation split when training ends
    early_stopping_patience: int = 0  # stop after this many evaluations without improvement; 0 = off
    early_stopping_threshold: float = 0.0  # an eval loss must beat the best by more than this to count
    keep_best: bool = True  # the exported adapter is the one with the lowest eval loss

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError("method", f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        _check_range("beta", self.beta, low=0, high=100, low_inclusive=False)
        if not isinstance(self.start_from, str) or (self.start_from and not UUID_RE.match(self.start_from)):
            raise ConfigError("start_from", f"must be a job id or empty, got {self.start_from!r}")
        if self.is_preference and self.packing:
            raise ConfigError("packing", f"is not available with {self.method}: each pair keeps its chosen and "
                                         "rejected answers in their own rows; turn packing off")
        _check_range("rank", self.rank, low=1, high=1024, integer=True)
        _check_range("alpha", self.alpha, low=0, high=4096, low_inclusive=False)
        _check_range("dropout", self.dropout, low=0, high=0.9)
        if self.target_preset not in TARGET_PRESETS:
            raise ConfigError("target_preset", f"must be one of {', '.join(TARGET_PRESETS)}, got {self.target_preset!r}")
        modules = _module_names("target_modules", self.target_modules)
        object.__setattr__(self, "target_modules", modules)
        object.__setattr__(self, "modules_to_save", _module_names("modules_to_save", self.modules_to_save))
        if self.target_preset == "custom" and not modules:
            raise ConfigError("target_modules", "list at least one module name when target layers is 'custom'")
        if self.target_preset != "custom" and modules:
            raise ConfigError("target_modules", "only allowed when target layers is 'custom'")
        for name in ("use_rslora", "use_dora", "qlora", "gradient_checkpointing", "final_eval", "packing",
                     "keep_best", "liger"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        if self.bias not in BIAS_CHOICES:
            raise ConfigError("bias", f"must be one of {', '.join(BIAS_CHOICES)}, got {self.bias!r}")
        if self.init_lora_weights not in INIT_CHOICES:
            raise ConfigError("init_lora_weights",
                              f"must be one of {', '.join(INIT_CHOICES)}, got {self.init_lora_weights!r}")
        if self.init_lora_weights == "pissa" and self.start_from:
            raise ConfigError("init_lora_weights", "PiSSA initialises a new adapter; a job that starts from another "
                                                   "job's adapter uses the default init")
        if self.init_lora_weights == "pissa" and self.method == "dpo":
            raise ConfigError("init_lora_weights", "PiSSA rewrites the base weights and DPO's reference is the base "
                                                   "with the adapter off; use the default init (or ORPO)")
        if self.init_lora_weights == "pissa" and self.qlora:
            raise ConfigError("init_lora_weights", "PiSSA rewrites the base weights and needs the 16-bit base; "
                                                   "turn QLoRA off or use the default init")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _check_range("epochs", self.epochs, low=0, high=100, low_inclusive=False)
        _check_range("learning_rate", self.learning_rate, low=0, high=1, low_inclusive=False)
        _check_range("batch_size", self.batch_size, low=1, high=1024, integer=True)
        _check_range("grad_accum", self.grad_accum, low=1, high=1024, integer=True)
        _check_range("devices", self.devices, low=1, high=MAX_DEVICES, integer=True)
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision in ("bf16", "fp16") and self.bias != "none":
            raise ConfigError("precision", f"trained biases live inside the base's layers, so they would be trained in "
                                           f"{self.precision}; set bias to none or precision to fp32 or auto")
        if self.devices > 1 and self.is_preference:
            raise ConfigError("devices", f"{self.method} trains on one device for now (its pairs and reference pass "
                                         "are not split across processes yet); set devices to 1")
        if self.sharding not in SHARDING:
            raise ConfigError("sharding", f"must be one of {', '.join(SHARDING)}, got {self.sharding!r}")
        if self.sharding == "fsdp":
            if self.devices < 2:
                raise ConfigError("sharding", "fsdp shards the model across devices and needs at least 2; "
                                              f"set devices to 2 or more, or sharding to none (devices is {self.devices})")
            if self.qlora:
                raise ConfigError("sharding", "fsdp is not available with QLoRA (4-bit bitsandbytes weights are not "
                                              "sharded here); turn QLoRA off or set sharding to none")
            if self.init_lora_weights == "pissa":
                raise ConfigError("sharding", "fsdp is not available with PiSSA (it rewrites the base and converts "
                                              "the adapter against whole weights); use the default init or set "
                                              "sharding to none")
        if self.devices > self.batch_size:
            raise ConfigError("devices", f"each device takes a share of every micro-batch, so devices can be at most "
                                         f"the batch size ({self.batch_size}), got {self.devices}")
        _check_range("max_seq_length", self.max_seq_length, low=16, high=131072, integer=True)
        _check_range("warmup_ratio", self.warmup_ratio, low=0, high=0.5)
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError("lr_scheduler", f"must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        _check_range("weight_decay", self.weight_decay, low=0, high=1)
        _check_range("max_grad_norm", self.max_grad_norm, low=0, high=1000)
        _check_range("max_steps", self.max_steps, low=0, high=10_000_000, integer=True)
        _check_range("seed", self.seed, low=0, high=2**32 - 1, integer=True)
        _check_range("save_every", self.save_every, low=1, high=10_000_000, integer=True)
        _check_range("eval_every", self.eval_every, low=0, high=10_000_000, integer=True)
        _check_range("early_stopping_patience", self.early_stopping_patience, low=0, high=1000, integer=True)
        _check_range("early_stopping_threshold", self.early_stopping_threshold, low=0, high=100)

    @property
    def is_preference(self) -> bool:
        """True for the methods that train on preference pairs (chosen vs rejected answers)."""
        return self.method in PREFERENCE_METHODS

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
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
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


# Starting points; every value can still be changed. Alpha is 2 x rank throughout (the usual guidance).
PRESETS: dict[str, dict[str, Any]] = {
    # A first look in minutes: rank 8 on attention, one epoch, a higher learning rate.
    "quick": {"rank": 8, "alpha": 16, "dropout": 0.05, "target_preset": "attention", "epochs": 1,
              "learning_rate": 2e-3, "lr_scheduler": "linear", "use_rslora": False},
    # The defaults: rank 16 on attention, two epochs.
    "balanced": {"rank": 16, "alpha": 32, "dropout": 0.05, "target_preset": "attention", "epochs": 2,
                 "learning_rate": 1e-3, "lr_scheduler": "linear", "use_rslora": False},
    # Every Linear layer, three epochs, a lower learning rate with a cosine decay.
    "quality": {"rank": 16, "alpha": 32, "dropout": 0.05, "target_preset": "all_linear", "epochs": 3,
                "learning_rate": 5e-4, "lr_scheduler": "cosine", "use_rslora": False},
}


def preset_of(config: TrainConfig) -> str:
    """The name of the preset whose every value `config` has, or "custom"."""
    for name, values in PRESETS.items():
        if all(getattr(config, key) == value for key, value in values.items()):
            return name
    return "custom"


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings for one chat answer."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0
    system_prompt: str = ""

    def __post_init__(self) -> None:
        _check_range("max_new_tokens", self.max_new_tokens, low=1, high=4096, integer=True)
        _check_range("temperature", self.temperature, low=0, high=5)
        _check_range("top_p", self.top_p, low=0, high=1, low_inclusive=False)
        _check_range("seed", self.seed, low=0, high=2**32 - 1, integer=True)
        if not isinstance(self.system_prompt, str):
            raise ConfigError("system_prompt", "must be text")


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

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSpec":
        data = dict(data)
        data["config"] = TrainConfig.from_dict(data.get("config", {}))
        return cls(**data)
