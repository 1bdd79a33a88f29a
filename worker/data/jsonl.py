"""JSON Lines parsing with a line number on every record and problem, shared by the dataset loader
and the normalised reader (the standard `json` module only, so a syntax error names its line)."""
from __future__ import annotations

import json

from worker.data.examples import Record
from worker.data.problems import Problem

BOM = b"\xef\xbb\xbf"


def json_error(exc: Exception) -> str:
    """A problem message for a JSON parse failure (its column, or too deep nesting)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"is not valid JSON: {exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "is not usable JSON: it is nested too deeply"
    return f"is not valid JSON: {exc}"


def parse_jsonl(raw: bytes) -> tuple[list[Record], list[Problem]]:
    """One record per non-blank line; a line that is not UTF-8 or not JSON becomes a problem."""
    records: list[Record] = []
    problems: list[Problem] = []
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if number == 1:
            line_bytes = line_bytes.removeprefix(BOM)
        if not line_bytes.strip():
            continue
        try:
            text = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(number, "", f"is not valid UTF-8 (byte {exc.start + 1})"))
            continue
        try:
            records.append(Record(number, json.loads(text)))
        except (ValueError, RecursionError) as exc:
            problems.append(Problem(number, "", json_error(exc)))
    return records, problems
