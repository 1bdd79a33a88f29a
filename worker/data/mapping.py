"""`ColumnMapping`: which columns of a file of unknown schema hold the text, or the prompt,
response and system message, or (for preference pairs) the prompt, chosen and rejected answers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from worker.data.problems import type_name
from worker.errors import InputError


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns of a file hold what: a `text` column alone, or `prompt` + `response` (+ `system`),
    or a preference pair: `prompt` + `chosen` + `rejected` (+ `system`)."""

    text: str | None = None
    prompt: str | None = None
    response: str | None = None
    system: str | None = None
    chosen: str | None = None
    rejected: str | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InputError(f.name, f"must be a column name, got {value!r}")
        if self.text is not None:
            for other in ("prompt", "response", "system", "chosen", "rejected"):
                if getattr(self, other) is not None:
                    raise InputError(
                        other,
                        "cannot be mapped together with a text column; map either text "
                        "alone, or prompt and response (system optional)",
                    )
            return
        if self.chosen is not None or self.rejected is not None:
            self._check_pair()
            return
        if self.prompt is None and self.response is None:
            raise InputError(
                "prompt",
                "map a prompt and a response column, or a text column, or prompt, "
                "chosen and rejected columns (preference pairs)",
            )
        if self.prompt is None:
            raise InputError("prompt", "is required together with response")
        if self.response is None:
            raise InputError("response", "is required together with prompt")
        if self.response == self.prompt:
            raise InputError("response", f"uses the same column as prompt ({self.prompt!r})")
        if self.system is not None and self.system in (self.prompt, self.response):
            other = "prompt" if self.system == self.prompt else "response"
            raise InputError("system", f"uses the same column as {other} ({self.system!r})")

    @property
    def is_preference(self) -> bool:
        return self.chosen is not None

    def _check_pair(self) -> None:
        """prompt, chosen and rejected (system optional), each its own column; no response column."""
        if self.response is not None:
            raise InputError(
                "response", "map either a response column, or chosen and rejected columns (preference pairs), not both"
            )
        for name in ("prompt", "chosen", "rejected"):
            if getattr(self, name) is None:
                raise InputError(name, "is required for preference pairs (prompt, chosen and rejected)")
        seen: dict[str, str] = {}
        for name in ("prompt", "chosen", "rejected", "system"):
            column = getattr(self, name)
            if column is None:
                continue
            if column in seen:
                raise InputError(name, f"uses the same column as {seen[column]} ({column!r})")
            seen[column] = name

    def to_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnMapping:
        """Build from JSON-like data; empty values mean "not mapped", unknown keys are an error."""
        if not isinstance(data, dict):
            raise InputError("mapping", f"must be an object, got {type_name(data)}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise InputError(str(key), f"is not a mapping field; allowed: {', '.join(known)}")
        return cls(**{k: (v if v != "" else None) for k, v in data.items()})

    def check_columns(self, columns: list[str]) -> None:
        """InputError naming the mapping field whose column the file does not have."""
        for name, column in self.to_dict().items():
            if column not in columns:
                raise InputError(
                    name, f"column {column!r} is not in the file; its columns are: {', '.join(columns) or 'none'}"
                )
