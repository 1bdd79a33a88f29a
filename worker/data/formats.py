"""File formats: JSON Lines, a JSON array, CSV and Parquet. Detecting the format of a file from its
extension and content, and parsing it into located records. Training never imports this module.

JSONL is read line by line with the standard `json` module, so that a syntax error names its
line; a JSON array is parsed by `json` too (its errors carry line and column, which the
pyarrow/`datasets` JSON readers do not give); CSV by the standard `csv` module (the only reader
here that knows the line a record starts on once quoted values hold newlines); Parquet by pyarrow.
"""
from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from worker.data.examples import Record
from worker.data.jsonl import BOM, json_error, parse_jsonl
from worker.data.problems import DatasetError, Problem, base_name, type_name

FORMATS = ("jsonl", "json", "csv", "parquet")
FORMAT_NAMES = {"jsonl": "JSON Lines", "json": "JSON", "csv": "CSV", "parquet": "Parquet"}
# Every accepted file extension and the format it stands for: the upload form and the loader agree on it.
EXTENSIONS: dict[str, str] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                              ".parquet": "parquet", ".pq": "parquet"}
_JSON_WS = re.compile(r"[ \t\n\r]*")


def format_for_filename(filename: str) -> str:
    """The format `filename`'s extension stands for; DatasetError naming the file and the accepted extensions."""
    name = base_name(filename)
    suffix = Path(name).suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    accepted = ", ".join(f"{ext} ({FORMAT_NAMES[fmt]})" for ext, fmt in EXTENSIONS.items())
    shown = f"the extension {suffix}" if suffix else "no extension"
    raise DatasetError(name, [Problem(0, "", f"has {shown}; accepted extensions: {accepted}", unit="")])


@dataclass
class ParsedFile:
    """A file's records before any schema check, and the problems parsing found."""

    format: str  # one of FORMATS
    records: list[Record]
    problems: list[Problem]
    columns: list[str]
    header_line: int = 0  # the line of a CSV file's header
    unit: str = "line"  # "row" for Parquet


def parse_file(path: Path, raw: bytes, name: str) -> ParsedFile:
    """Detect the format (extension of `name` and content) and parse the records; DatasetError when unreadable."""
    fmt = detect_format(raw, name)
    if fmt == "parquet":
        columns, records = parse_parquet(path, name)
        return ParsedFile(fmt, records, [], columns, unit="row")
    if fmt == "csv":
        columns, header_line, records, problems = parse_csv(decode_text(raw, name))
        return ParsedFile(fmt, records, problems, columns, header_line)
    if fmt == "jsonl":
        records, problems = parse_jsonl(raw)
    else:
        records, problems = parse_json_array(decode_text(raw, name))
    return ParsedFile(fmt, records, problems, _columns_of(records))


def _columns_of(records: list[Record]) -> list[str]:
    seen: dict[str, None] = {}
    for rec in records:
        if isinstance(rec.value, dict):
            for key in rec.value:
                seen.setdefault(str(key), None)
    return list(seen)


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
    for line in raw.removeprefix(BOM).split(b"\n"):
        if line.strip():
            return line
    return b""


def _parses(raw: bytes, kind: type) -> bool:
    try:
        return isinstance(json.loads(raw.removeprefix(BOM).decode("utf-8")), kind)
    except (ValueError, RecursionError):
        return False


def detect_format(raw: bytes, name: str) -> str:
    """The format from the name's extension and the content; DatasetError when it cannot be read."""
    ext = EXTENSIONS.get(Path(name).suffix.lower())
    if raw.startswith(b"PAR1"):
        return "parquet"
    problem = _binary_problem(raw, ext)
    if problem is not None:
        if ext == "parquet":
            problem = Problem(0, "", "is not a Parquet file (a Parquet file starts with PAR1)", unit="")
        raise DatasetError(name, [problem])
    start = raw.removeprefix(BOM).lstrip()[:1]
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


def decode_text(raw: bytes, name: str) -> str:
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


def parse_json_array(text: str) -> tuple[list[Record], list[Problem]]:
    """Items of a top-level JSON array with the line each starts on; a syntax error names line and column."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [Problem(exc.lineno, "", json_error(exc))]
    except (ValueError, RecursionError) as exc:
        return [], [Problem(1, "", json_error(exc))]
    first = len(text) - len(text.lstrip(" \t\n\r"))
    line = text.count("\n", 0, first) + 1
    if not isinstance(value, list):
        hint = ""
        if isinstance(value, dict):
            lists = [k for k, v in value.items() if isinstance(v, list)]
            if len(lists) == 1 and len(value) <= 3:
                hint = f' (the examples must be the array itself, not under "{lists[0]}"; or save them as JSON Lines)'
        return [], [Problem(line, "", f"must be a JSON array of objects like [{{...}}, {{...}}], "
                                      f"got {type_name(value)}{hint}")]
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
        records.append(Record(line, item, item=index))
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


def parse_csv(text: str) -> tuple[list[str], int, list[Record], list[Problem]]:
    """Columns, header line and rows, each row numbered by the line it starts on (header = line 1)."""
    _raise_csv_field_limit()
    reader = csv.reader(_csv_lines(text), strict=True)
    header: list[str] | None = None
    header_line = 1
    records: list[Record] = []
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
            records.append(Record(start, {k: v for k, v in zip(header, row) if k}))
    except csv.Error as exc:
        hint = "; a quoted value that starts here is never closed" if "unexpected end of data" in str(exc) else ""
        problems.append(Problem(previous + 1, "", f"is not valid CSV: {exc}{hint}"))
    columns = [c for c in header or [] if c]
    if header is not None and not records and not problems:
        problems.append(Problem(header_line, "", "the file has a header but no rows"))
    return columns, header_line, records, problems


def parse_parquet(path: Path, name: str) -> tuple[list[str], list[Record]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        columns = [str(c) for c in pf.schema_arrow.names]
        records: list[Record] = []
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                records.append(Record(len(records) + 1, row))
    except Exception as exc:  # pyarrow raises several types for a corrupt file; all mean "unreadable"
        raise DatasetError(name, [Problem(0, "", f"is not a readable Parquet file ({exc})", unit="")]) from None
    if not records:
        raise DatasetError(name, [Problem(0, "", "the Parquet file has no rows", unit="")])
    return columns, records
