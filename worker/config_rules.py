"""The rules between a training config's settings (each setting's own type and range are checked from its
metadata by `worker.setting_fields.check_fields`); the first one broken raises a ConfigError naming the setting
to change."""

from __future__ import annotations

from typing import Any

from worker.errors import ConfigError


def check_rules(config: Any) -> None:
    """Raise a ConfigError for the first rule between `config`'s settings (a TrainConfig) that it breaks."""
    _check_method(config)
    _check_lora(config)
    _check_devices(config)


def _check_method(config: Any) -> None:
    """The rules between the method and the other settings."""
    if config.is_preference and config.packing:
        raise ConfigError(
            "packing",
            f"is not available with {config.method}: each pair keeps its chosen and "
            "rejected answers in their own rows; turn packing off",
        )
    if config.is_preference and config.beta == 0:
        raise ConfigError("beta", f"must be more than 0 for {config.method} (0.1 is usual)")
    if config.is_reinforcement and config.packing:
        raise ConfigError("packing", "is not available with reinforcement: each prompt's answers are sampled apart")
    if config.devices > 1 and config.is_reinforcement:
        raise ConfigError("devices", "reinforcement trains on one device for now; set devices to 1")
    if config.init_lora_weights == "pissa" and config.is_reinforcement:
        raise ConfigError(
            "init_lora_weights",
            "PiSSA rewrites the base weights and reinforcement's reference is the model with the adapter off; "
            "use the default init",
        )
    if config.devices > 1 and config.is_preference:
        raise ConfigError(
            "devices",
            f"{config.method} trains on one device for now (its pairs and reference pass "
            "are not split across processes yet); set devices to 1",
        )


def _check_lora(config: Any) -> None:
    """The rules between the adapter's settings."""
    if config.target_preset == "custom" and not config.target_modules:
        raise ConfigError("target_modules", "list at least one module name when target layers is 'custom'")
    if config.target_preset != "custom" and config.target_modules:
        raise ConfigError("target_modules", "only allowed when target layers is 'custom'")
    if config.init_lora_weights == "pissa" and config.start_from:
        raise ConfigError(
            "init_lora_weights",
            "PiSSA initialises a new adapter; a job that starts from another job's adapter uses the default init",
        )
    if config.init_lora_weights == "pissa" and config.method == "dpo":
        raise ConfigError(
            "init_lora_weights",
            "PiSSA rewrites the base weights and DPO's reference is the base "
            "with the adapter off; use the default init (or ORPO)",
        )
    if config.init_lora_weights == "pissa" and config.qlora:
        raise ConfigError(
            "init_lora_weights",
            "PiSSA rewrites the base weights and needs the 16-bit base; turn QLoRA off or use the default init",
        )
    if config.precision in ("bf16", "fp16") and config.bias != "none":
        raise ConfigError(
            "precision",
            f"trained biases live inside the base's layers, so they would be trained in "
            f"{config.precision}; set bias to none or precision to fp32 or auto",
        )


def _check_devices(config: Any) -> None:
    """The rules of training on several devices."""
    if config.sharding == "fsdp":
        if config.devices < 2:
            raise ConfigError(
                "sharding",
                "fsdp shards the model across devices and needs at least 2; "
                f"set devices to 2 or more, or sharding to none (devices is {config.devices})",
            )
        if config.qlora:
            raise ConfigError(
                "sharding",
                "fsdp is not available with QLoRA (4-bit bitsandbytes weights are not "
                "sharded here); turn QLoRA off or set sharding to none",
            )
        if config.init_lora_weights == "pissa":
            raise ConfigError(
                "sharding",
                "fsdp is not available with PiSSA (it rewrites the base and converts "
                "the adapter against whole weights); use the default init or set "
                "sharding to none",
            )
    if config.devices > config.batch_size:
        raise ConfigError(
            "devices",
            f"each device takes a share of every micro-batch, so devices can be at most "
            f"the batch size ({config.batch_size}), got {config.devices}",
        )
