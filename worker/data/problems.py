"""What is wrong with a dataset file: `Problem` (located by line or row and field) and the errors
that carry them (`DatasetError`, `SchemaUnknown`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.errors import StudioError

MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, located by line (or row) and field.

    `unit` is "line" for text formats and "row" for Parquet; "" marks a problem of the whole file.
    `item` is the 1-based position in a JSON array, shown because several items may share a line.
    """

    line: int
    field: str
    message: str
    unit: str = "line"
    item: int | None = None

    def __str__(self) -> str:
        where = f"{self.unit} {self.line}" if self.unit else ""
        if self.item is not None:
            where += f" (item {self.item})"
        body = f"{self.field} {self.message}" if self.field else self.message
        return f"{where}: {body}" if where else body


class DatasetError(StudioError, ValueError):
    """The file cannot be used; `problems` says where and why (first ones first)."""

    field = "file"

    def __init__(self, filename: str, problems: list[Problem], total: int | None = None):
        self.filename = filename
        self.problems = problems[:MAX_PROBLEMS_SHOWN]
        self.total = total if total is not None else len(problems)
        shown = "; ".join(str(p) for p in self.problems[:3])
        more = f" (and {self.total - 3} more)" if self.total > 3 else ""
        super().__init__(f"{filename}: {shown}{more}")

    def messages(self) -> list[str]:
        return [f"{self.filename}, {p}" for p in self.problems]

    def body(self) -> dict[str, Any]:
        """The error as the REST API answers it: the message, each problem, and how many there are."""
        return {"field": "file", "message": str(self), "problems": self.messages(), "total": self.total}


class SchemaUnknown(DatasetError):
    """The records' columns match no known schema; `columns` lets the user map them to roles."""

    def __init__(
        self,
        filename: str,
        columns: list[str],
        line: int = 1,
        unit: str = "line",
        samples: dict[str, list[str]] | None = None,
    ):
        self.columns = list(columns)
        self.samples = samples or {}  # a few short values per column, shown beside the mapping selects
        shown = ", ".join(self.columns[:30]) + (f" and {len(self.columns) - 30} more" if len(self.columns) > 30 else "")
        message = (
            f"the columns found ({shown}) match no known schema; expected one of: "
            "preference (prompt, chosen, rejected; or input, preferred_output, non_preferred_output), "
            "messages (messages), sharegpt (conversations), prompt_completion (prompt, completion), "
            "alpaca (instruction, output, optional input), text (text); "
            "map the columns to prompt and response (or text, or prompt, chosen and rejected) instead"
        )
        super().__init__(filename, [Problem(line, "", message, unit=unit)])


def type_name(value: Any) -> str:
    """The JSON name of a value's type, as problem messages show it ("object", "null", "list" ...)."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def base_name(filename: str) -> str:
    """The last path component, whatever the separators: names only ever appear in messages."""
    name = filename.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return name or "dataset"
