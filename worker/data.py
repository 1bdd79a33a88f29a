"""Dataset reading, validation, normalisation and tokenization.

A dataset file comes in one of four formats (JSONL, JSON array, CSV, Parquet) and one of five
schemas (chat `messages`, ShareGPT `conversations`, `prompt`/`completion`, Alpaca, plain `text`),
or in any columns the user maps to roles with a `ColumnMapping`. `load_dataset_file` reads it,
checks every record and turns each into an `Example`: a list of chat messages, or a text. The web
app stores those as normalised JSONL (`write_normalized_jsonl`), which is what the engine trains
on (`read_normalized_jsonl` + `tokenize_examples`).

Validation reports every problem with its line (or Parquet row) and field (`line 17:
messages[1].role must be one of system, user, assistant, got "bot"`), so the web app can refuse a
file with a message the user can act on. Tokenization renders each conversation through the
tokenizer's own chat template and keeps the loss on assistant tokens only; a text is trained on
every token.

Parsers: JSONL is read line by line with the standard `json` module, so that a syntax error names
its line; a JSON array is parsed by `json` too (its errors carry line and column, which the
pyarrow/`datasets` JSON readers do not give); CSV by the standard `csv` module (the only reader
here that knows the line a record starts on once quoted values hold newlines); Parquet by pyarrow.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from worker.config import ConfigError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
FORMATS = ("jsonl", "json", "csv", "parquet")
SCHEMAS = ("messages", "sharegpt", "prompt_completion", "alpaca", "text")
# The keys a record needs to be read as each schema, in the order schemas are preferred.
SCHEMA_KEYS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
}
SCHEMA_EXAMPLES = {
    "messages": '{"messages": [...]}',
    "sharegpt": '{"conversations": [...]}',
    "prompt_completion": '{"prompt": "...", "completion": "..."}',
    "alpaca": '{"instruction": "...", "input": "...", "output": "..."}',
    "text": '{"text": "..."}',
}
EXTENSION_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                     ".parquet": "parquet", ".pq": "parquet"}
FORMAT_NAMES = {"jsonl": "JSON Lines", "json": "JSON", "csv": "CSV", "parquet": "Parquet"}
DEFAULT_MAX_CHARS = 200_000
MAX_PROBLEMS_SHOWN = 20
IGNORE_INDEX = -100
_BOM = b"\xef\xbb\xbf"
_JSON_WS = re.compile(r"[ \t\n\r]*")
_SURROGATE = "holds an invalid character (a lone UTF-16 surrogate escape such as \\ud800)"


# --- problems -------------------------------------------------------------------------------------

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


class SchemaUnknown(DatasetError):
    """The records' columns match no known schema; `columns` lets the user map them to roles."""

    def __init__(self, filename: str, columns: list[str], line: int = 1, unit: str = "line"):
        self.columns = list(columns)
        shown = ", ".join(self.columns[:30]) + (f" and {len(self.columns) - 30} more" if len(self.columns) > 30 else "")
        message = (f"the columns found ({shown}) match no known schema; expected one of: "
                   "messages (messages), sharegpt (conversations), prompt_completion (prompt, completion), "
                   "alpaca (instruction, output, optional input), text (text); "
                   "map the columns to prompt and response (or text) instead")
        super().__init__(filename, [Problem(line, "", message, unit=unit)])


# --- column mapping -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ColumnMapping:
    """Which columns of a file hold what: a `text` column alone, or `prompt` + `response` (+ `system`)."""

    text: str | None = None
    prompt: str | None = None
    response: str | None = None
    system: str | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f.name, f"must be a column name, got {value!r}")
        if self.text is not None:
            for other in ("prompt", "response", "system"):
                if getattr(self, other) is not None:
                    raise ConfigError(other, "cannot be mapped together with a text column; map either text "
                                             "alone, or prompt and response (system optional)")
            return
        if self.prompt is None and self.response is None:
            raise ConfigError("prompt", "map a prompt and a response column, or a text column")
        if self.prompt is None:
            raise ConfigError("prompt", "is required together with response")
        if self.response is None:
            raise ConfigError("response", "is required together with prompt")
        if self.response == self.prompt:
            raise ConfigError("response", f"uses the same column as prompt ({self.prompt!r})")
        if self.system is not None and self.system in (self.prompt, self.response):
            other = "prompt" if self.system == self.prompt else "response"
            raise ConfigError("system", f"uses the same column as {other} ({self.system!r})")

    def to_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ColumnMapping":
        """Build from JSON-like data; empty values mean "not mapped", unknown keys are an error."""
        if not isinstance(data, dict):
            raise ConfigError("mapping", f"must be an object, got {_type_name(data)}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise ConfigError(str(key), f"is not a mapping field; allowed: {', '.join(known)}")
        return cls(**{k: (v if v != "" else None) for k, v in data.items()})

    def check_columns(self, columns: list[str]) -> None:
        """ConfigError naming the mapping field whose column the file does not have."""
        for name, column in self.to_dict().items():
            if column not in columns:
                raise ConfigError(name, f"column {column!r} is not in the file; its columns are: "
                                        f"{', '.join(columns) or 'none'}")


# --- examples -------------------------------------------------------------------------------------

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
class LoadedDataset:
    """A validated file, normalised to examples, and what the dataset page shows about it."""

    examples: list[Example]
    format: str
    schema: str  # one of SCHEMAS, or "mapped"
    columns: list[str]
    rows: int  # examples kept
    duplicates: list[tuple[int, int]]  # (line of the duplicate, line of its first occurrence)
    dropped_duplicates: int
    sha256: str
    turns: dict[str, int]
    chars: int


@dataclass
class DatasetSummary:
    """What a valid chat JSONL file holds."""

    rows: int
    format: str
    schema: str
    sha256: str
    turns: dict[str, int] = field(default_factory=dict)
    chars: int = 0


# --- small helpers --------------------------------------------------------------------------------

def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_unicode(text: str) -> bool:
    """False when the string holds lone surrogates (from \\ud800-style JSON escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _base_name(filename: str) -> str:
    """The last path component, whatever the separators: names only ever appear in messages."""
    name = filename.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return name or "dataset"


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"is not valid JSON: {exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "is not usable JSON: it is nested too deeply"
    return f"is not valid JSON: {exc}"


@dataclass
class _Record:
    line: int
    value: Any
    item: int | None = None


Reporter = Callable[..., None]  # (field, message) -> None, bound to one record's location


# --- record checks --------------------------------------------------------------------------------

def _missing(record: dict, key: str, report: Reporter) -> None:
    keys = ", ".join(sorted(map(str, record))) or "none"
    report(key, f"is missing (keys found: {keys})")


def _check_string(record: dict, key: str, report: Reporter, *, required: bool = True) -> str | None:
    """The string at record[key], or None after reporting why not. Optional keys may be absent, null or blank."""
    if key not in record:
        if required:
            _missing(record, key, report)
        return None
    value = record[key]
    if value is None and not required:
        return None
    if not isinstance(value, str):
        report(key, f"must be a string, got {_type_name(value)}")
        return None
    if not _is_unicode(value):
        report(key, _SURROGATE)
        return None
    if not value.strip():
        if required:
            report(key, "is empty")
        return None
    return value


def _check_turns(turns: Any, report: Reporter, *, name: str, role_key: str, content_key: str,
                 role_map: dict[str, str], assistant_hint: str = "") -> list[dict[str, str]] | None:
    """Validate a list of chat turns; return them as {role, content} messages, or None after reporting."""
    if not isinstance(turns, list):
        report(name, f"must be a list of messages, got {_type_name(turns)}")
        return None
    if not turns:
        report(name, "is empty; a conversation needs at least one user and one assistant turn")
        return None
    found = 0
    messages: list[dict[str, str]] = []
    allowed = ", ".join(role_map)

    def bad(field_: str, message: str) -> None:
        nonlocal found
        found += 1
        report(field_, message)

    for i, msg in enumerate(turns):
        where = f"{name}[{i}]"
        if not isinstance(msg, dict):
            bad(where, f"must be an object with {role_key} and {content_key}, got {_type_name(msg)}")
            continue
        for key in (role_key, content_key):
            if key not in msg:
                bad(f"{where}.{key}", "is missing")
        raw_role = msg.get(role_key)
        role = role_map.get(raw_role) if isinstance(raw_role, str) else None
        if role_key in msg and role is None:
            bad(f"{where}.{role_key}", f"must be one of {allowed}, got {_show(raw_role)}")
        content = msg.get(content_key)
        if content_key in msg:
            if not isinstance(content, str):
                bad(f"{where}.{content_key}", f"must be a string, got {_type_name(content)}")
            elif not _is_unicode(content):
                bad(f"{where}.{content_key}", _SURROGATE)
            elif not content.strip():
                bad(f"{where}.{content_key}", "is empty")
        if role == "system" and i != 0:
            bad(f"{where}.{role_key}", "a system message may only be the first message")
        if role is not None and isinstance(content, str):
            messages.append({"role": role, "content": content})
    if found:
        return None
    if not any(m["role"] == "assistant" for m in messages):
        report(name, f"has no assistant turn{assistant_hint}, so there is nothing to learn")
        return None
    return messages


def _cell_json(value: Any, key: str, report: Reporter) -> tuple[bool, Any]:
    """CSV cells are text: a messages/conversations cell must hold the list written as JSON."""
    if not isinstance(value, str):
        return True, value
    try:
        return True, json.loads(value)
    except (ValueError, RecursionError) as exc:
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "too deeply nested"
        report(key, f"must be a list of messages written as JSON; the cell is not valid JSON ({detail})")
        return False, None


def _to_messages(system: str | None, user: str, assistant: str) -> list[dict[str, str]]:
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _convert(schema: str, record: dict, report: Reporter, *, text_cells: bool,
             mapping: ColumnMapping | None = None) -> Example | None:
    """One record as an Example of `schema` (source filled in by the caller), or None after reporting."""
    before = _Counter(report)
    report = before
    if schema == "messages":
        if "messages" not in record:
            _missing(record, "messages", report)
            return None
        ok, value = _cell_json(record["messages"], "messages", report) if text_cells else (True, record["messages"])
        msgs = _check_turns(value, report, name="messages", role_key="role", content_key="content",
                            role_map={r: r for r in ROLES}) if ok else None
        return Example(0, messages=msgs) if msgs is not None else None
    if schema == "sharegpt":
        if "conversations" not in record:
            _missing(record, "conversations", report)
            return None
        system = _check_string(record, "system", report, required=False)
        ok, value = _cell_json(record["conversations"], "conversations", report) if text_cells \
            else (True, record["conversations"])
        msgs = _check_turns(value, report, name="conversations", role_key="from", content_key="value",
                            role_map=SHAREGPT_ROLES, assistant_hint=" (from gpt or assistant)") if ok else None
        if msgs is None or before.count:
            return None
        if system and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system}] + msgs
        return Example(0, messages=msgs)
    if schema == "prompt_completion":
        system = _check_string(record, "system", report, required=False)
        prompt = _check_string(record, "prompt", report)
        completion = _check_string(record, "completion", report)
        if before.count:
            return None
        return Example(0, messages=_to_messages(system, prompt, completion))
    if schema == "alpaca":
        system = _check_string(record, "system", report, required=False)
        instruction = _check_string(record, "instruction", report)
        extra = _check_string(record, "input", report, required=False)
        output = _check_string(record, "output", report)
        if before.count:
            return None
        user = instruction + "\n\n" + extra if extra else instruction
        return Example(0, messages=_to_messages(system, user, output))
    if schema == "text":
        text = _check_string(record, "text", report)
        return Example(0, text=text) if text is not None else None
    if schema == "mapped":
        assert mapping is not None
        if mapping.text is not None:
            text = _check_string(record, mapping.text, report)
            return Example(0, text=text) if text is not None else None
        system = _check_string(record, mapping.system, report, required=False) if mapping.system else None
        prompt = _check_string(record, mapping.prompt, report)
        response = _check_string(record, mapping.response, report)
        if before.count:
            return None
        return Example(0, messages=_to_messages(system, prompt, response))
    raise ValueError(f"unknown schema {schema!r}")


class _Counter:
    """Wraps a reporter and counts what went through it."""

    def __init__(self, report: Reporter):
        self.report, self.count = report, 0

    def __call__(self, field_: str, message: str) -> None:
        self.count += 1
        self.report(field_, message)


def _detect_schema(records: list[_Record]) -> str | None:
    """The schema most records match (ties go to the earlier schema in SCHEMAS), or None."""
    counts = {s: 0 for s in SCHEMAS}
    for rec in records:
        if isinstance(rec.value, dict):
            for schema in SCHEMAS:
                if all(k in rec.value for k in SCHEMA_KEYS[schema]):
                    counts[schema] += 1
                    break
    best = max(SCHEMAS, key=lambda s: (counts[s], -SCHEMAS.index(s)))
    return best if counts[best] else None


def _columns_of(records: list[_Record]) -> list[str]:
    seen: dict[str, None] = {}
    for rec in records:
        if isinstance(rec.value, dict):
            for key in rec.value:
                seen.setdefault(str(key), None)
    return list(seen)


# --- format detection and parsing -----------------------------------------------------------------

def _line_of(raw: bytes, offset: int) -> tuple[int, int]:
    """(1-based line, 1-based byte within that line) of a byte offset."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    return raw.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _binary_problem(raw: bytes, fmt: str | None) -> Problem | None:
    """A problem when the bytes are not text at all (NUL bytes, mostly undecodable or control bytes)."""
    expected = f"{FORMAT_NAMES[fmt]} text" if fmt and fmt != "parquet" else "text"
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return Problem(1, "", "the file is UTF-16 text; save it as UTF-8")
    nul = raw.find(b"\x00", 0, 1 << 16)
    if nul >= 0:
        line, byte = _line_of(raw, nul)
        return Problem(line, "", f"the file is binary, not {expected} (a NUL byte at byte {byte})")
    head = raw[:8192].decode("utf-8", errors="replace")
    bad = sum(1 for ch in head if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\t\n\r\f\v") or ord(ch) == 127)
    if head and bad > max(4, 0.3 * len(head)):
        return Problem(1, "", f"the file is binary, not {expected} ({bad} of its first {len(head)} characters "
                              "are not text)")
    return None


def _first_line(raw: bytes) -> bytes:
    for line in raw.removeprefix(_BOM).split(b"\n"):
        if line.strip():
            return line
    return b""


def _parses(raw: bytes, kind: type) -> bool:
    try:
        return isinstance(json.loads(raw.removeprefix(_BOM).decode("utf-8")), kind)
    except (ValueError, RecursionError):
        return False


def _detect_format(raw: bytes, name: str) -> str:
    """The format from the name's extension and the content; DatasetError when it cannot be read."""
    ext = EXTENSION_FORMATS.get(Path(name).suffix.lower())
    if raw.startswith(b"PAR1"):
        return "parquet"
    problem = _binary_problem(raw, ext)
    if problem is not None:
        if ext == "parquet":
            problem = Problem(0, "", "is not a Parquet file (a Parquet file starts with PAR1)", unit="")
        raise DatasetError(name, [problem])
    start = raw.removeprefix(_BOM).lstrip()[:1]
    first_line = _first_line(raw)
    first_is_object = start == b"{" and _parses(first_line, dict)
    if ext == "jsonl":
        if start == b"[" and _parses(raw, list):
            return "json"
        if start == b"{" and not _parses(first_line, object) and _parses(raw, object):
            return "json"  # a pretty-printed JSON document named .jsonl
        return "jsonl"
    if ext == "json":
        # A JSON document (even a lone object, which gets a clear "must be an array" error), unless
        # the lines are objects of their own: JSON Lines in a .json file.
        return "jsonl" if first_is_object and not _parses(raw, object) else "json"
    if ext == "csv":
        if first_is_object:
            return "jsonl"
        if start == b"[" and _parses(raw, list):
            return "json"
        return "csv"
    # A text file named .parquet, or an unknown extension: go by the content.
    if start == b"[":
        return "json"
    if start == b"{":
        return "jsonl" if first_is_object else "json"
    if ext is None:
        return "csv"
    raise DatasetError(name, [Problem(0, "", "is not a Parquet file (a Parquet file starts with PAR1)", unit="")])


def _decode_text(raw: bytes, name: str) -> str:
    """The file as text, or DatasetError naming each line with invalid UTF-8 and the byte."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        problems = []
        for number, line in enumerate(raw.split(b"\n"), start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(Problem(number, "", f"is not valid UTF-8 (byte {exc.start + 1})"))
        raise DatasetError(name, problems) from None
    return text.removeprefix("\ufeff")


def _parse_jsonl(raw: bytes) -> tuple[list[_Record], list[Problem]]:
    records: list[_Record] = []
    problems: list[Problem] = []
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if number == 1:
            line_bytes = line_bytes.removeprefix(_BOM)
        if not line_bytes.strip():
            continue
        try:
            text = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(number, "", f"is not valid UTF-8 (byte {exc.start + 1})"))
            continue
        try:
            records.append(_Record(number, json.loads(text)))
        except (ValueError, RecursionError) as exc:
            problems.append(Problem(number, "", _json_error(exc)))
    return records, problems


def _parse_json_array(text: str) -> tuple[list[_Record], list[Problem]]:
    """Items of a top-level JSON array with the line each starts on; a syntax error names line and column."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [Problem(exc.lineno, "", _json_error(exc))]
    except (ValueError, RecursionError) as exc:
        return [], [Problem(1, "", _json_error(exc))]
    first = len(text) - len(text.lstrip(" \t\n\r"))
    line = text.count("\n", 0, first) + 1
    if not isinstance(value, list):
        hint = ""
        if isinstance(value, dict):
            lists = [k for k, v in value.items() if isinstance(v, list)]
            if len(lists) == 1 and len(value) <= 3:
                hint = f' (the examples must be the array itself, not under "{lists[0]}"; or save them as JSON Lines)'
        return [], [Problem(line, "", f"must be a JSON array of objects like [{{...}}, {{...}}], "
                                      f"got {_type_name(value)}{hint}")]
    if not value:
        return [], [Problem(line, "", "the JSON array is empty; it holds no examples")]
    # The text is valid JSON: walk it once more to learn where each item starts.
    decoder = json.JSONDecoder()
    pos = _JSON_WS.match(text, first + 1).end()
    records = []
    counted = first  # lines are counted incrementally: one pass over the text in all
    for index, item in enumerate(value, start=1):
        line += text.count("\n", counted, pos)
        counted = pos
        records.append(_Record(line, item, item=index))
        _, end = decoder.raw_decode(text, pos)
        pos = _JSON_WS.match(text, end).end() + 1  # past the ',' (or the closing ']')
        pos = _JSON_WS.match(text, pos).end()
    return records, []


def _csv_lines(text: str) -> Iterable[str]:
    for line in text.split("\n"):
        yield line + "\n"


def _raise_csv_field_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            if csv.field_size_limit() < limit:
                csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _parse_csv(text: str) -> tuple[list[str], int, list[_Record], list[Problem]]:
    """Columns, header line and rows, each row numbered by the line it starts on (header = line 1)."""
    _raise_csv_field_limit()
    reader = csv.reader(_csv_lines(text), strict=True)
    header: list[str] | None = None
    header_line = 1
    records: list[_Record] = []
    problems: list[Problem] = []
    previous = 0
    try:
        for row in reader:
            start, previous = previous + 1, reader.line_num
            if all(not v.strip() for v in row):
                continue  # blank lines, and the empty rows spreadsheets leave at the end
            if header is None:
                header, header_line = [v.strip() for v in row], start
                seen: set[str] = set()
                for name in header:
                    if name and name in seen:
                        return [], start, [], [Problem(start, "", f"the header names the column {name!r} twice")]
                    seen.add(name)
                continue
            extra = row[len(header):]
            if len(row) < len(header) or any(v.strip() for v in extra):
                problems.append(Problem(start, "", f"has {len(row)} values, but the header has {len(header)} columns"))
                continue
            records.append(_Record(start, {k: v for k, v in zip(header, row) if k}))
    except csv.Error as exc:
        hint = "; a quoted value that starts here is never closed" if "unexpected end of data" in str(exc) else ""
        problems.append(Problem(previous + 1, "", f"is not valid CSV: {exc}{hint}"))
    columns = [c for c in header or [] if c]
    if header is not None and not records and not problems:
        problems.append(Problem(header_line, "", "the file has a header but no rows"))
    return columns, header_line, records, problems


def _parse_parquet(path: Path, name: str) -> tuple[list[str], list[_Record]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        columns = [str(c) for c in pf.schema_arrow.names]
        records: list[_Record] = []
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                records.append(_Record(len(records) + 1, row))
    except Exception as exc:  # pyarrow raises several types for a corrupt file; all mean "unreadable"
        raise DatasetError(name, [Problem(0, "", f"is not a readable Parquet file ({exc})", unit="")]) from None
    if not records:
        raise DatasetError(name, [Problem(0, "", "the Parquet file has no rows", unit="")])
    return columns, records


# --- loading --------------------------------------------------------------------------------------

def load_dataset_file(path: str | Path, filename: str | None = None, *, mapping: ColumnMapping | None = None,
                      max_chars: int = DEFAULT_MAX_CHARS, drop_duplicates: bool = False) -> LoadedDataset:
    """Read, validate and normalise a dataset file of any supported format and schema.

    `filename` (the user's name for the file; only its base name is used, in messages and to read
    the extension) defaults to the path's name. Raises DatasetError listing the problems by line
    (or row) and field, SchemaUnknown (a DatasetError carrying `.columns`) when the columns match
    no schema and no mapping is given, or ConfigError when `mapping` names a missing column.
    """
    path = Path(path)
    name = _base_name(filename) if filename else path.name
    if isinstance(mapping, dict):
        mapping = ColumnMapping.from_dict(mapping)
    if mapping is not None and not isinstance(mapping, ColumnMapping):
        raise ConfigError("mapping", f"must be a ColumnMapping, got {_type_name(mapping)}")
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ConfigError("max_chars", f"must be a positive integer, got {max_chars!r}")
    raw = path.read_bytes()
    sha256 = hashlib.sha256(raw).hexdigest()
    if not raw.removeprefix(_BOM).strip():
        raise DatasetError(name, [Problem(1, "", "the file is empty")])

    fmt = _detect_format(raw, name)
    unit = "line"
    problems: list[Problem] = []
    header_line = 0
    if fmt == "parquet":
        unit = "row"
        columns, records = _parse_parquet(path, name)
    elif fmt == "jsonl":
        records, problems = _parse_jsonl(raw)
        columns = _columns_of(records)
    elif fmt == "json":
        records, problems = _parse_json_array(_decode_text(raw, name))
        columns = _columns_of(records)
    else:
        columns, header_line, records, problems = _parse_csv(_decode_text(raw, name))
    text_cells = fmt == "csv"

    if mapping is not None:
        if columns:
            mapping.check_columns(columns)
        elif problems:
            raise DatasetError(name, problems)
        schema = "mapped"
    else:
        detected = _detect_schema(records)
        if detected is None:
            if problems:
                raise DatasetError(name, problems)
            if columns and fmt == "parquet":
                raise SchemaUnknown(name, columns, 0, "")
            if columns:
                first = header_line or next(r.line for r in records if isinstance(r.value, dict))
                raise SchemaUnknown(name, columns, first)
        schema = detected or "messages"  # no columns at all: report against the default schema

    examples: list[Example] = []
    for rec in records:
        def report(field_: str, message: str, rec: _Record = rec) -> None:
            problems.append(Problem(rec.line, field_, message, unit=unit, item=rec.item))

        if not isinstance(rec.value, dict):
            like = f"like {SCHEMA_EXAMPLES[schema]}" if schema in SCHEMA_EXAMPLES else "with the mapped columns"
            report("", f"must be a JSON object {like}, got {_type_name(rec.value)}")
            continue
        example = _convert(schema, rec.value, report, text_cells=text_cells, mapping=mapping)
        if example is None:
            continue
        example.source = rec.line
        if example.chars > max_chars:
            report("", f"the example has {example.chars:,} characters, over the limit of {max_chars:,}")
            continue
        examples.append(example)
    if problems:
        problems.sort(key=lambda p: (p.line, p.item or 0))
        raise DatasetError(name, problems)
    if not examples:
        raise DatasetError(name, [Problem(1, "", "the file holds no examples")])

    duplicates: list[tuple[int, int]] = []
    first_seen: dict[bytes, int] = {}
    kept: list[Example] = []
    for ex in examples:
        key = hashlib.sha256(json.dumps(ex.to_json(), ensure_ascii=False, sort_keys=True).encode()).digest()
        if key in first_seen:
            duplicates.append((ex.source, first_seen[key]))
            if drop_duplicates:
                continue
        else:
            first_seen[key] = ex.source
        kept.append(ex)

    turns = {r: 0 for r in ROLES}
    for ex in kept:
        for m in ex.messages or ():
            turns[m["role"]] += 1
    return LoadedDataset(examples=kept, format=fmt, schema=schema, columns=columns, rows=len(kept),
                         duplicates=duplicates, dropped_duplicates=len(examples) - len(kept), sha256=sha256,
                         turns=turns, chars=sum(ex.chars for ex in kept))


# --- normalised JSONL -----------------------------------------------------------------------------

_UNICODE_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}
_UNICODE_LINE_BREAKS_RE = re.compile("[\u2028\u2029\x85]")


def _json_line(value: dict) -> str:
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


def _read_jsonl_examples(path: str | Path, filename: str | None, *, allow_text: bool) -> list[Example]:
    path = Path(path)
    filename = filename or path.name
    raw = path.read_bytes()
    if not raw.removeprefix(_BOM).strip():
        raise DatasetError(filename, [Problem(1, "", "the file is empty")])
    records, problems = _parse_jsonl(raw)
    examples: list[Example] = []
    for rec in records:
        def report(field_: str, message: str, line: int = rec.line) -> None:
            problems.append(Problem(line, field_, message))

        value = rec.value
        if not isinstance(value, dict):
            report("", f'must be a JSON object like {{"messages": [...]}}, got {_type_name(value)}')
            continue
        if allow_text and "messages" not in value and "text" in value:
            example = _convert("text", value, report, text_cells=False)
        else:
            example = _convert("messages", value, report, text_cells=False)
        if example is not None:
            example.source = rec.line
            examples.append(example)
    if problems:
        problems.sort(key=lambda p: p.line)
        raise DatasetError(filename, problems)
    return examples


def read_normalized_jsonl(path: str | Path) -> list[Example]:
    """Read what `write_normalized_jsonl` wrote (lines of {"messages": [...]} or {"text": "..."}).

    A plain chat JSONL file is a valid normalised file. Every line is checked; DatasetError otherwise.
    """
    return _read_jsonl_examples(path, None, allow_text=True)


def read_chat_jsonl(path: str | Path, filename: str | None = None) -> list[list[dict[str, str]]]:
    """Read and validate a chat JSONL file; return the conversations or raise DatasetError."""
    return [ex.messages for ex in _read_jsonl_examples(path, filename, allow_text=False)]


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


# --- tokenization ---------------------------------------------------------------------------------

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


def tokenize_text(tokenizer, text: str, max_length: int) -> TokenizedExample:
    """Continued pre-training: the text (with the tokenizer's own special tokens) plus EOS, all trained."""
    ids: list[int] = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    ids = ids[:max_length]
    return TokenizedExample(ids, list(ids))


def tokenize_example(tokenizer, example: Example, max_length: int) -> TokenizedExample:
    """Messages: chat template, assistant tokens trained. Text: every token trained, EOS at the end."""
    if example.messages is not None:
        return tokenize_conversation(tokenizer, example.messages, max_length)
    if example.text is not None:
        return tokenize_text(tokenizer, example.text, max_length)
    raise ValueError(f"example from line {example.source} has neither messages nor text")


def tokenize_examples(tokenizer, examples: Iterable[Example], max_length: int) -> list[TokenizedExample]:
    """Tokenize every example; drop ones left with no trained token after truncation."""
    out = []
    for example in examples:
        ex = tokenize_example(tokenizer, example, max_length)
        if ex.trained_tokens:
            out.append(ex)
    return out


def tokenize_dataset(tokenizer, conversations: Iterable[list[dict[str, str]]], max_length: int) -> list[TokenizedExample]:
    """Tokenize every conversation; drop ones left with no trained token after truncation."""
    return tokenize_examples(tokenizer, (Example(0, messages=conv) for conv in conversations), max_length)
