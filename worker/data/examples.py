"""The records read from a file (`Record`, with where each starts) and the normalised training
`Example` every schema is turned into."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")


def _plain(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


@dataclass
class Example:
    """One normalised training example: chat messages, or a text trained on every token, or a
    preference pair: `messages` is then the prompt (the conversation up to the answer, ending with a
    user turn) and `chosen` / `rejected` are the preferred and the other answer (assistant messages),
    or a prompt to reward (`item` set)."""

    source: int  # 1-based line (jsonl, json, csv) or row (parquet) in the original file
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    chosen: list[dict[str, str]] | None = None
    rejected: list[dict[str, str]] | None = None
    # A prompt to answer and reward (reinforcement fine-tuning): `messages` ends with a user turn and `item` holds
    # the row's other fields, which the graders read as {{item.<field>}}.
    item: dict[str, Any] | None = None

    @property
    def is_preference(self) -> bool:
        return self.chosen is not None

    @property
    def is_prompt(self) -> bool:
        return self.item is not None

    def to_json(self) -> dict[str, Any]:
        if self.item is not None:
            return {"messages": _plain(self.messages or []), "item": self.item}
        if self.chosen is not None:
            return {
                "messages": _plain(self.messages or []),
                "chosen": _plain(self.chosen),
                "rejected": _plain(self.rejected or []),
            }
        if self.messages is not None:
            return {"messages": _plain(self.messages)}
        return {"text": self.text}

    @property
    def chars(self) -> int:
        answers = (self.chosen or []) + (self.rejected or [])
        if self.messages is not None or answers:
            return sum(len(m["content"]) for m in (self.messages or []) + answers)
        return len(self.text or "")


@dataclass
class Record:
    """One parsed record (a JSON value or a CSV / Parquet row) and where it starts in the file."""

    line: int  # 1-based line (jsonl, json, csv) or row (parquet)
    value: Any
    item: int | None = None  # 1-based position in a JSON array
