"""Limits on what reading a dataset file may build: rows, characters per field and in all, columns
and JSON nesting. The readers check them before (Parquet metadata, JSON text) and while (every
row) they build Python objects, so a small file that unpacks into millions of rows or one huge
string is refused instead of exhausting memory. The web app passes its settings; the names of
those settings appear in the messages so an operator knows which one to raise."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, fields

from worker.data.problems import Problem
from worker.errors import InputError

# The setting (environment variable) of the web app behind each limit, shown in refusals.
SETTING_NAMES = {
    "max_rows": "DATASET_MAX_ROWS",
    "max_field_chars": "DATASET_MAX_FIELD_CHARS",
    "max_total_chars": "DATASET_MAX_TOTAL_CHARS",
    "max_nesting": "DATASET_MAX_NESTING",
    "max_columns": "DATASET_MAX_COLUMNS",
}


@dataclass(frozen=True)
class DataLimits:
    """What one dataset file may hold; every field is a positive integer."""

    max_rows: int = 200_000
    max_field_chars: int = 1_000_000  # one value (a CSV cell, a JSON string, a Parquet cell)
    max_total_chars: int = 200_000_000  # all the text of the file
    max_nesting: int = 64  # JSON arrays and objects inside one another
    max_columns: int = 1_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f.name, f"must be a positive integer, got {value!r}")


class LimitExceeded(Exception):
    """A reader crossed a limit; `problem` says where. The loader turns it into a DatasetError."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


def over_limit(
    limits: DataLimits, name: str, what: str, *, line: int = 0, field: str = "", unit: str = "line"
) -> LimitExceeded:
    """The error for `what` ("rows", "characters"...) past the limit `name` (a DataLimits field)."""
    limit = getattr(limits, name)
    message = f"has more than {limit:,} {what} (limit {SETTING_NAMES[name]})"
    return LimitExceeded(Problem(line, field, message, unit=unit if line else ""))


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_BRACKET_OR_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_JSON_BRACKET = re.compile(r"[\[\]{}]")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_too_deep(text: str, max_nesting: int) -> int | None:
    """The offset of the first bracket nested deeper than `max_nesting`, or None; strings are skipped.

    A cheap scan of the text, so a document nested 100,000 levels deep is refused before `json`
    recurses into it (and before any code walking the parsed value would).
    """
    if text.count("[") + text.count("{") <= max_nesting:
        return None
    brackets = _JSON_BRACKET.findall(_JSON_STRING.sub("", text))
    if max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0) <= max_nesting:
        return None
    depth = 0
    for match in _JSON_BRACKET_OR_STRING.finditer(text):  # found deep: now find where, in Python
        step = _STEP.get(match.group())
        if step is None:
            continue
        depth += step
        if depth > max_nesting:
            return match.start()
    return None


def longest_string(value: object, limit: int) -> tuple[str, int] | None:
    """(path, length) of a string in a parsed JSON value longer than `limit`, or None."""
    stack: list[tuple[str, object]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if len(item) > limit:
                return path, len(item)
        elif isinstance(item, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
    return None
