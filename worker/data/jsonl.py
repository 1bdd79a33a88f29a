"""JSON Lines parsing with a line number on every record and problem, shared by the dataset loader
and the normalised reader (the standard `json` module only, so a syntax error names its line)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from worker.data.examples import Record
from worker.data.limits import DataLimits, json_too_deep, longest_string, over_limit
from worker.data.problems import Problem

BOM = b"\xef\xbb\xbf"


def json_syntax(exc: json.JSONDecodeError) -> str:
    """What is wrong and at which column: "Unterminated string starting at column 43" (the parser's own
    message may end in "at", which the column follows once, not twice)."""
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


def json_error(exc: Exception) -> str:
    """A problem message for a JSON parse failure (its column, or too deep nesting)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"is not valid JSON: {json_syntax(exc)}"
    if isinstance(exc, RecursionError):
        return "is not usable JSON: it is nested too deeply"
    return f"is not valid JSON: {exc}"


def iter_lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based number, bytes) of each line split at b"\\n", one at a time (no list of all lines)."""
    start, number = 0, 0
    while start <= len(raw):
        end = raw.find(b"\n", start)
        if end < 0:
            end = len(raw)
        number += 1
        yield number, raw[start:end]
        start = end + 1


def parse_jsonl(raw: bytes, limits: DataLimits | None = None) -> tuple[list[Record], list[Problem]]:
    """One record per non-blank line; a line that is not UTF-8 or not JSON becomes a problem.

    With `limits`, raises LimitExceeded at the line that crosses one (rows, characters in all,
    characters of one string, nesting) before that line is parsed where the text alone tells.
    """
    records: list[Record] = []
    problems: list[Problem] = []
    rows = total = 0
    for number, line_bytes in iter_lines(raw):
        if number == 1:
            line_bytes = line_bytes.removeprefix(BOM)
        if not line_bytes.strip():
            continue
        try:
            text = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(number, "", f"is not valid UTF-8 (byte {exc.start + 1})"))
            continue
        if limits is not None:
            rows, total = rows + 1, total + len(text)
            if rows > limits.max_rows:
                raise over_limit(limits, "max_rows", "rows", line=number)
            if total > limits.max_total_chars:
                raise over_limit(limits, "max_total_chars", "characters of text", line=number)
            if json_too_deep(text, limits.max_nesting) is not None:
                raise over_limit(limits, "max_nesting", "levels of nesting", line=number)
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            problems.append(Problem(number, "", json_error(exc)))
            continue
        if limits is not None and len(text) > limits.max_field_chars:
            long = longest_string(value, limits.max_field_chars)
            if long is not None:
                raise over_limit(limits, "max_field_chars", "characters", line=number, field=long[0])
        records.append(Record(number, value))
    return records, problems
