"""Normalised JSONL, what the web app stores and the engine trains on: one {"messages": [...]} or
{"text": "..."} per line, written atomically and checked line by line when read."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from worker.data.examples import Example
from worker.data.jsonl import BOM, parse_jsonl
from worker.data.problems import DatasetError, Problem, type_name
from worker.data.schemas import Report, convert_record

_UNICODE_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}
_UNICODE_LINE_BREAKS_RE = re.compile("[\u2028\u2029\x85]")


def _json_line(value: dict[str, Any]) -> str:
    """UTF-8 JSON on one line; the Unicode line breaks that str.splitlines() honours are escaped too."""
    text = json.dumps(value, ensure_ascii=False)
    return _UNICODE_LINE_BREAKS_RE.sub(lambda m: _UNICODE_LINE_BREAKS[m.group()], text) + "\n"


def write_normalized_jsonl(examples: list[Example], path: str | Path) -> None:
    """One `Example.to_json()` per line; written to a temporary file, then moved into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for ex in examples:
                fh.write(_json_line(ex.to_json()))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_normalized_lines(
    source: str | Path, dest: str | Path, held_dest: str | Path | None = None, held: AbstractSet[int] = frozenset()
) -> tuple[int, int]:
    """Copy a normalised JSONL file example by example (one a line, never the whole file in memory): the example
    at each position in `held` to `held_dest`, the others to `dest`. Returns (to dest, to held_dest) counts."""
    kept = taken = 0
    with contextlib.ExitStack() as files:
        src = files.enter_context(open(source, "rb"))
        out = files.enter_context(open(dest, "wb"))
        aside = files.enter_context(open(held_dest, "wb")) if held_dest is not None else None
        position = 0
        for line in src:
            if not line.strip():
                continue
            if position in held and aside is not None:
                aside.write(line if line.endswith(b"\n") else line + b"\n")
                taken += 1
            else:
                out.write(line if line.endswith(b"\n") else line + b"\n")
                kept += 1
            position += 1
        for fh in (out, aside):
            if fh is not None:
                fh.flush()
                os.fsync(fh.fileno())
    return kept, taken


def read_normalized_jsonl(path: str | Path) -> list[Example]:
    """Read what `write_normalized_jsonl` wrote (lines of {"messages": [...]} or {"text": "..."}).

    A plain chat JSONL file is a valid normalised file. Every line is checked; DatasetError otherwise.
    """
    path = Path(path)
    raw = path.read_bytes()
    if not raw.removeprefix(BOM).strip():
        raise DatasetError(path.name, [Problem(1, "", "the file is empty")])
    records, problems = parse_jsonl(raw)
    examples: list[Example] = []
    for rec in records:

        def report(field_: str, message: str, line: int = rec.line) -> None:
            problems.append(Problem(line, field_, message))

        value = rec.value
        if not isinstance(value, dict):
            report("", f'must be a JSON object like {{"messages": [...]}}, got {type_name(value)}')
            continue
        if "chosen" in value or "rejected" in value:
            example = _preference(value, report)
            if example is not None:
                example.source = rec.line
                examples.append(example)
            continue
        if isinstance(value.get("item"), dict):  # a prompt to reward: its messages and the row's other fields
            value = {**value["item"], "messages": value.get("messages")}
            schema = "prompts"
        else:
            schema = "text" if "messages" not in value and "text" in value else "messages"
        example = convert_record(schema, value, report, text_cells=False)
        if example is not None:
            example.source = rec.line
            examples.append(example)
    if problems:
        problems.sort(key=lambda p: p.line)
        raise DatasetError(path.name, problems)
    return examples


def _preference(value: dict[str, Any], report: Report) -> Example | None:
    """A normalised preference line: {"messages": prompt, "chosen": [assistant...], "rejected": [...]}."""

    def turns(key: str, roles: tuple[str, ...]) -> list[dict[str, str]] | None:
        got = value.get(key)
        if not isinstance(got, list) or not got:
            report(key, f"must be a non-empty list of messages, got {type_name(got)}")
            return None
        for i, m in enumerate(got):
            if not isinstance(m, dict) or m.get("role") not in roles or not isinstance(m.get("content"), str):
                report(f"{key}[{i}]", f"must be a message with role {' or '.join(roles)} and a string content")
                return None
        return got

    prompt = turns("messages", ("system", "user", "assistant"))
    chosen, rejected = turns("chosen", ("assistant",)), turns("rejected", ("assistant",))
    if prompt is None or chosen is None or rejected is None:
        return None
    if prompt[-1]["role"] != "user":
        report("messages", "the prompt must end with a user message")
        return None
    return Example(source=0, messages=prompt, chosen=chosen, rejected=rejected)


def normalized_kind(path: str | Path) -> str:
    """What a normalised file holds, from its first line (a file holds one kind): "pairs" (preference pairs),
    "prompts" (prompts to reward) or "examples"."""
    with open(path, "rb") as fh:
        for raw in fh:
            line = raw.removeprefix(BOM).strip()
            if line:
                try:
                    value = json.loads(line)
                except ValueError:
                    return "examples"
                if isinstance(value, dict) and "chosen" in value:
                    return "pairs"
                if isinstance(value, dict) and isinstance(value.get("item"), dict):
                    return "prompts"
                return "examples"
    return "examples"


def holds_preference_pairs(path: str | Path) -> bool:
    """Whether a normalised file holds preference pairs, from its first line (a file holds one kind)."""
    return normalized_kind(path) == "pairs"


def first_prompts(path: str | Path, count: int) -> list[tuple[list[dict[str, str]], dict[str, Any]]]:
    """The first `count` prompts to reward of a normalised file, as (messages, item), reading no further than
    needed; [] when the file holds something else."""
    found: list[tuple[list[dict[str, str]], dict[str, Any]]] = []
    with open(path, "rb") as fh:
        for raw in fh:
            if len(found) >= count:
                break
            line = raw.removeprefix(BOM).strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except ValueError:
                return []
            if not isinstance(value, dict) or not isinstance(value.get("item"), dict):
                return []
            messages = value.get("messages")
            if not isinstance(messages, list):
                return []
            found.append((messages, value["item"]))
    return found


def prompt_fields(path: str | Path) -> list[str]:
    """The fields a grader can read as {{item.<field>}}: the first prompt's item keys ([] for other data)."""
    first = first_prompts(path, 1)
    return list(first[0][1]) if first else []
