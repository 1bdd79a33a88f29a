"""The choices of the training settings that have a fixed set of values, each with its label for people, and the
method groups (`worker.config`'s settings take their `choices` from here)."""

from __future__ import annotations

METHOD_LABELS = {
    "supervised": "Examples with answers (supervised)",
    "dpo": "A preferred and a rejected answer, kept near the base (DPO)",
    "orpo": "A preferred and a rejected answer, no reference model (ORPO)",
    "reinforcement": "Prompts whose answers your graders score (reinforcement, GRPO)",
}
TARGET_LABELS = {
    "attention": "Attention layers only: smaller and faster (attention)",
    "mlp": "Feed-forward layers only (mlp)",
    "all_linear": "Every layer: larger, slower, often better (all linear)",
    "custom": "Layers I name (custom list)",
}
LR_SCHEDULER_LABELS = {"linear": "linear", "cosine": "cosine", "constant": "constant"}
BIAS_LABELS = {"none": "none", "lora_only": "lora_only", "all": "all"}
INIT_LABELS = {
    "default": "Default (A random, B zero)",
    "gaussian": "Gaussian",
    "pissa": "PiSSA (principal singular vectors; 16-bit base only)",
}
OPTIMIZER_LABELS = {"adamw": "AdamW", "paged_adamw_8bit": "Paged 8-bit AdamW (CUDA only)"}
SHARDING_LABELS = {
    "none": "None: each device holds the whole base (data parallel)",
    "fsdp": "FSDP: the base is split across the devices (for a model too large for one)",
}
PRECISION_LABELS = {
    "auto": "Auto: bf16 where the device computes it natively, else fp32",
    "fp32": "fp32 (full precision, twice the base's memory)",
    "bf16": "bf16",
    "fp16": "fp16 (CUDA only)",
}

METHODS = tuple(METHOD_LABELS)  # supervised: next-token loss; dpo / orpo: preference pairs
PREFERENCE_METHODS = ("dpo", "orpo")
REINFORCEMENT = "reinforcement"  # OpenAI's name: prompts, answers sampled and scored by graders (GRPO here)
TARGET_PRESETS = tuple(TARGET_LABELS)
LR_SCHEDULERS = tuple(LR_SCHEDULER_LABELS)
BIAS_CHOICES = tuple(BIAS_LABELS)
INIT_CHOICES = tuple(INIT_LABELS)
OPTIMIZERS = tuple(OPTIMIZER_LABELS)
SHARDING = tuple(SHARDING_LABELS)  # none: every device holds the whole base; fsdp: the base is sharded across them
PRECISIONS = tuple(PRECISION_LABELS)  # the frozen base's dtype; LoRA weights and optimizer stay fp32
