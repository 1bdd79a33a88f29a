"""The records read from a file (`Record`, with where each starts) and the normalised training
`Example` every schema is turned into."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    """One normalised training example: chat messages, or a text trained on every token."""

    source: int  # 1-based line (jsonl, json, csv) or row (parquet) in the original file
    messages: list[dict[str, str]] | None = None
    text: str | None = None

    def to_json(self) -> dict:
        if self.messages is not None:
            return {"messages": [{"role": m["role"], "content": m["content"]} for m in self.messages]}
        return {"text": self.text}

    @property
    def chars(self) -> int:
        if self.messages is not None:
            return sum(len(m["content"]) for m in self.messages)
        return len(self.text or "")


@dataclass
class Record:
    """One parsed record (a JSON value or a CSV / Parquet row) and where it starts in the file."""

    line: int  # 1-based line (jsonl, json, csv) or row (parquet)
    value: Any
    item: int | None = None  # 1-based position in a JSON array
