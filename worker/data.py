"""Dataset reading, validation and tokenization.

Validation reports every problem with its line and field (`line 17: messages[1].role must be
one of system, user, assistant, got "bot"`), so the web app can refuse a file with a message
the user can act on. Tokenization renders each conversation through the tokenizer's own chat
template and keeps the loss on assistant tokens only.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ROLES = ("system", "user", "assistant")
MAX_PROBLEMS_SHOWN = 20
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, located by line and field."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f": {self.field}" if self.field else "")
        return f"{where} {self.message}" if self.field else f"{where}: {self.message}"


class DatasetError(ValueError):
    """The file cannot be used; `problems` says where and why (first ones first)."""

    def __init__(self, filename: str, problems: list[Problem], total: int | None = None):
        self.filename = filename
        self.problems = problems[:MAX_PROBLEMS_SHOWN]
        self.total = total if total is not None else len(problems)
        shown = "; ".join(str(p) for p in self.problems[:3])
        more = f" (and {self.total - 3} more)" if self.total > 3 else ""
        super().__init__(f"{filename}: {shown}{more}")

    def messages(self) -> list[str]:
        return [f"{self.filename}, {p}" for p in self.problems]


@dataclass
class DatasetSummary:
    """What a valid file holds."""

    rows: int
    format: str
    schema: str
    sha256: str
    turns: dict[str, int] = field(default_factory=dict)
    chars: int = 0


def _check_messages(messages: Any, line: int) -> list[Problem]:
    problems: list[Problem] = []
    if not isinstance(messages, list):
        return [Problem(line, "messages", f"must be a list of messages, got {type(messages).__name__}")]
    if not messages:
        return [Problem(line, "messages", "is empty; a conversation needs at least one user and one assistant turn")]
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            problems.append(Problem(line, where, f"must be an object with role and content, got {type(msg).__name__}"))
            continue
        for key in ("role", "content"):
            if key not in msg:
                problems.append(Problem(line, f"{where}.{key}", "is missing"))
        role = msg.get("role")
        if "role" in msg and role not in ROLES:
            problems.append(Problem(line, f"{where}.role", f"must be one of {', '.join(ROLES)}, got {json.dumps(role)}"))
        content = msg.get("content")
        if "content" in msg:
            if not isinstance(content, str):
                problems.append(Problem(line, f"{where}.content", f"must be a string, got {type(content).__name__}"))
            elif not content.strip():
                problems.append(Problem(line, f"{where}.content", "is empty"))
        if role == "system" and i != 0:
            problems.append(Problem(line, f"{where}.role", "a system message may only be the first message"))
    if not problems and not any(m.get("role") == "assistant" for m in messages):
        problems.append(Problem(line, "messages", "has no assistant turn, so there is nothing to learn"))
    return problems


def read_chat_jsonl(path: str | Path, filename: str | None = None) -> list[list[dict[str, str]]]:
    """Read and validate a chat JSONL file; return the conversations or raise DatasetError."""
    path = Path(path)
    filename = filename or path.name
    raw = path.read_bytes()
    if not raw.strip():
        raise DatasetError(filename, [Problem(1, "", "the file is empty")])
    problems: list[Problem] = []
    conversations: list[list[dict[str, str]]] = []
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        try:
            text = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(number, "", f"is not valid UTF-8 (byte {exc.start + 1})"))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(Problem(number, "", f"is not valid JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(record, dict):
            problems.append(Problem(number, "", f'must be a JSON object like {{"messages": [...]}}, got {type(record).__name__}'))
            continue
        if "messages" not in record:
            keys = ", ".join(sorted(map(str, record))) or "none"
            problems.append(Problem(number, "messages", f"is missing (keys found: {keys})"))
            continue
        found = _check_messages(record["messages"], number)
        if found:
            problems.extend(found)
            continue
        conversations.append([{"role": m["role"], "content": m["content"]} for m in record["messages"]])
    if problems:
        raise DatasetError(filename, problems)
    return conversations


def summarize_chat_jsonl(path: str | Path, filename: str | None = None) -> DatasetSummary:
    """Validate the file and describe it (rows, roles, sha256)."""
    conversations = read_chat_jsonl(path, filename)
    turns: dict[str, int] = {r: 0 for r in ROLES}
    chars = 0
    for conv in conversations:
        for m in conv:
            turns[m["role"]] += 1
            chars += len(m["content"])
    return DatasetSummary(rows=len(conversations), format="jsonl", schema="messages",
                          sha256=file_sha256(path), turns=turns, chars=chars)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where the loss is masked

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def tokenize_conversation(tokenizer, messages: list[dict[str, str]], max_length: int) -> TokenizedExample:
    """Render through the chat template; labels cover the assistant turns only.

    Spans are found on the rendered text (prefix renders of the conversation), then mapped to
    tokens with the tokenizer's offsets, which works for any template that renders a prefix of
    the conversation as a prefix of the text.
    """
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start_text = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        end_text = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not full.startswith(start_text) or not full.startswith(end_text):
            raise ValueError("the chat template does not render conversation prefixes as text prefixes")
        spans.append((len(start_text), len(end_text)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if a == b:
            continue
        if any(s <= a < e for s, e in spans):
            labels[t] = ids[t]
    ids, labels = ids[:max_length], labels[:max_length]
    return TokenizedExample(ids, labels)


def tokenize_dataset(tokenizer, conversations: Iterable[list[dict[str, str]]], max_length: int) -> list[TokenizedExample]:
    """Tokenize every conversation; drop ones left with no trained token after truncation."""
    out = []
    for conv in conversations:
        ex = tokenize_conversation(tokenizer, conv, max_length)
        if ex.trained_tokens:
            out.append(ex)
    return out
