"""How a setting is declared and checked: `setting(...)` puts a field's label, help, limits and choices in its
metadata (the one place they live), and `check_fields` holds a frozen dataclass's values to them. The
settings themselves are `worker.config.TrainConfig`'s fields."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import field
from types import MappingProxyType
from typing import Any

from worker.errors import ConfigError

MODULE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The job form's groups under "Custom settings", in the order shown: group key -> its heading in plain words.
SETTING_GROUPS = {
    "learn": "What to learn from",
    "amount": "How much to train",
    "adapter": "Adapter size and layers",
    "memory": "Memory and speed",
    "checks": "Evaluation, data split and checkpoints",
}
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def setting(
    default: Any,
    *,
    label: str,
    help: str,
    plain: str = "",
    group: str = "",
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    choices: Mapping[str, str] | None = None,
    unit: str = "",
    openai: str = "",
    job_id: bool = False,
) -> Any:
    """A dataclass field whose metadata is the setting's one description.

    label: the setting's usual (technical) name, as the API, the job page and the error summary say it; plain:
    the form's label in everyday words when the usual name is jargon (the label is then shown as its hint);
    help: one sentence, plain words first; group: the job form's group the setting is shown in (a key of
    SETTING_GROUPS; empty for settings no form groups); min / max: the allowed range (`min_exclusive`: above
    min, not at it); choices: allowed value -> label for people; unit: what a number counts; openai: where the
    OpenAI-style API takes it ("hyperparameters.n_epochs", "method.{method}.hyperparameters.beta", "seed",
    "lora" for the `lora` extra); job_id: the value is a job id or empty.
    """
    if group and group not in SETTING_GROUPS:
        raise ValueError(f"group must be one of {', '.join(SETTING_GROUPS)} or empty, got {group!r}")
    meta = {
        "label": label,
        "plain": plain or label,
        "help": help,
        "group": group,
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
        "choices": MappingProxyType(dict(choices)) if choices is not None else None,
        "unit": unit,
        "openai": openai,
        "job_id": job_id,
    }
    return field(default=default, metadata=MappingProxyType(meta))


def value_type(f: dataclasses.Field[Any]) -> str:
    """The kind of value a field holds, from its annotation: bool, int, float, str or list."""
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return "list" if annotation.startswith("tuple") else annotation


def limits_text(meta: Mapping[str, Any]) -> str:
    """The allowed values in words, as the error messages say them: "between 1 and 1024", "one of a, b"."""
    if meta["choices"] is not None:
        return f"one of {', '.join(meta['choices'])}"
    low, high = meta["min"], meta["max"]
    if meta["min_exclusive"]:
        return f"more than {low:g} and at most {high:g}"
    return f"between {low:g} and {high:g}"


def check_range(
    name: str, value: Any, *, low: float, high: float, integer: bool = False, low_inclusive: bool = True
) -> None:
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


def module_names(name: str, modules: Any) -> tuple[str, ...]:
    """A list of module names from a list or a comma/newline separated string."""
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.replace("\n", ",").split(",") if m.strip()]
    elif not isinstance(modules, (list, tuple)):
        raise ConfigError(name, f"must be a list of module names, got {modules!r}")
    for m in modules:
        if not isinstance(m, str) or not MODULE_NAME_RE.match(m):
            raise ConfigError(name, f"{m!r} is not a valid module name (letters, digits, _)")
    return tuple(modules)


def checked_value(f: dataclasses.Field[Any], value: Any) -> Any:
    """`value` checked against field `f`'s metadata (its type, choices or range); the value, normalised."""
    meta, name, kind = f.metadata, f.name, value_type(f)
    if meta.get("choices") is not None:
        if not isinstance(value, str) or value not in meta["choices"]:
            raise ConfigError(name, f"must be {limits_text(meta)}, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
    elif kind in ("int", "float"):
        check_range(
            name,
            value,
            low=meta["min"],
            high=meta["max"],
            integer=kind == "int",
            low_inclusive=not meta["min_exclusive"],
        )
    elif kind == "list":
        return module_names(name, value)
    elif meta.get("job_id"):
        if not isinstance(value, str) or (value and not UUID_RE.match(value)):
            raise ConfigError(name, f"must be a job id or empty, got {value!r}")
    elif not isinstance(value, str):
        raise ConfigError(name, "must be text")
    return value


def check_fields(config: Any) -> None:
    """Every field of the (frozen) dataclass `config` checked against its own metadata, in declaration order."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        checked = checked_value(f, value)
        if checked is not value:
            object.__setattr__(config, f.name, checked)
