"""Which Linear layers LoRA adapts: discovery from the model, presets, custom-list validation.

Targets are given to PEFT as `parent.leaf` suffixes (`self_attn.q_proj`, `mlp.c_proj`), which
is unambiguous where one leaf name serves two blocks (GPT-2's `c_proj`). This module has no
torch import at load time, so the web process can validate a custom list cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from worker.config import ConfigError

if TYPE_CHECKING:
    import torch

ATTENTION_PARENTS = ("attn", "attention", "self_attn", "self_attention", "mixer")
MLP_PARENTS = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "experts")
OUTPUT_LAYERS = ("lm_head", "embed_out", "output")


def module_suffix(path: str) -> str:
    """`model.layers.3.self_attn.q_proj` -> `self_attn.q_proj`."""
    parts = path.split(".")
    return ".".join(parts[-2:]) if len(parts) >= 2 else path


def classify(suffix: str) -> str:
    """attention, mlp or other, from the parent module's name."""
    parent = suffix.split(".")[0].lower() if "." in suffix else ""
    if parent in ATTENTION_PARENTS or "attn" in parent or "attention" in parent:
        return "attention"
    if parent in MLP_PARENTS or "mlp" in parent:
        return "mlp"
    return "other"


def linear_module_suffixes(model: torch.nn.Module) -> list[str]:
    """Distinct `parent.leaf` suffixes of the model's Linear / Conv1D layers, output head excluded."""
    import torch
    from transformers.pytorch_utils import Conv1D

    found: list[str] = []
    for path, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, Conv1D)):
            continue
        if path.split(".")[-1] in OUTPUT_LAYERS:
            continue
        suffix = module_suffix(path)
        if suffix not in found:
            found.append(suffix)
    return found


def resolve_targets(available: Iterable[str], preset: str, custom: Iterable[str] = ()) -> list[str]:
    """The suffixes to adapt for a preset, or the validated custom list; ConfigError otherwise."""
    available = list(available)
    if preset == "custom":
        chosen: list[str] = []
        for name in custom:
            matches = [s for s in available if s == name or s.endswith("." + name) or s.split(".")[-1] == name]
            if not matches:
                leaves = sorted({s.split(".")[-1] for s in available})
                raise ConfigError(
                    "target_modules", f"{name!r} is not a Linear layer of this model; valid names: {', '.join(leaves)}"
                )
            chosen.extend(m for m in matches if m not in chosen)
        return chosen
    if preset == "all_linear":
        chosen = list(available)
    elif preset in ("attention", "mlp"):
        chosen = [s for s in available if classify(s) == preset]
    else:
        raise ConfigError("target_preset", f"unknown preset {preset!r}")
    if not chosen:
        raise ConfigError(
            "target_preset", f"this model has no {preset} Linear layers; pick another preset or a custom list"
        )
    return chosen


def saveable_modules(model: torch.nn.Module) -> list[str]:
    """Leaf names of whole modules outside the repeated blocks that hold weights (embeddings, norms, head).

    These are what `modules_to_save` can name: trained in full and stored with the adapter,
    e.g. `lm_head` and `embed_tokens` when new tokens were added.
    """
    found: list[str] = []
    for path, module in model.named_modules():
        if not path or any(part.isdigit() for part in path.split(".")):
            continue
        if next(module.parameters(recurse=False), None) is None:
            continue
        leaf = path.split(".")[-1]
        if leaf not in found:
            found.append(leaf)
    return found


def resolve_modules_to_save(available: Iterable[str], names: Iterable[str]) -> list[str]:
    """The validated `modules_to_save` list; ConfigError naming the unknown module otherwise."""
    available = list(available)
    chosen: list[str] = []
    for name in names:
        if name not in available:
            raise ConfigError(
                "modules_to_save",
                f"{name!r} is not a module this model can train in full; valid names: {', '.join(available)}",
            )
        if name not in chosen:
            chosen.append(name)
    return chosen
