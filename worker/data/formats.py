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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.data.examples import Record
from worker.data.jsonl import BOM, json_error, parse_jsonl
from worker.data.limits import DataLimits, LimitExceeded, json_too_deep, longest_string, over_limit
from worker.data.problems import DatasetError, Problem, base_name, type_name

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

FORMATS = ("jsonl", "json", "csv", "parquet")
FORMAT_NAMES = {"jsonl": "JSON Lines", "json": "JSON", "csv": "CSV", "parquet": "Parquet"}
# Every accepted file extension and the format it stands for: the upload form and the loader agree on it.
EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_JSON_WS = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, pos: int) -> int:
    """The position after the JSON whitespace at `pos` (the pattern matches the empty string too)."""
    match = _JSON_WS.match(text, pos)
    assert match is not None
    return match.end()


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


def parse_file(path: Path, raw: bytes, name: str, limits: DataLimits | None = None) -> ParsedFile:
    """Detect the format (extension of `name` and content) and parse the records; DatasetError when
    unreadable or past one of `limits` (DataLimits() when None)."""
    limits = limits or DataLimits()
    fmt = detect_format(raw, name)
    try:
        if fmt == "parquet":
            columns, records = parse_parquet(path, name, limits)
            return ParsedFile(fmt, records, [], columns, unit="row")
        if fmt == "csv":
            columns, header_line, records, problems = parse_csv(decode_text(raw, name), limits)
            return ParsedFile(fmt, records, problems, columns, header_line)
        if fmt == "jsonl":
            records, problems = parse_jsonl(raw, limits)
        else:
            records, problems = parse_json_array(decode_text(raw, name), limits)
        return ParsedFile(fmt, records, problems, _columns_of(records, limits))
    except LimitExceeded as exc:
        raise DatasetError(name, [exc.problem]) from None


def _columns_of(records: list[Record], limits: DataLimits) -> list[str]:
    seen: dict[str, None] = {}
    for rec in records:
        if isinstance(rec.value, dict):
            for key in rec.value:
                seen.setdefault(str(key), None)
            if len(seen) > limits.max_columns:
                raise over_limit(limits, "max_columns", "columns", line=rec.line)
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
        return Problem(
            1, "", f"the file is binary, not {expected} ({bad} of its first {len(head)} characters are not text)"
        )
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


def parse_json_array(text: str, limits: DataLimits | None = None) -> tuple[list[Record], list[Problem]]:
    """Items of a top-level JSON array with the line each starts on; a syntax error names line and column.

    Items are decoded one at a time, so the row limit holds before the whole array is built; the
    text's length and nesting are checked before any of it is parsed.
    """
    limits = limits or DataLimits()
    if len(text) > limits.max_total_chars:
        raise over_limit(limits, "max_total_chars", "characters of text")
    deep = json_too_deep(text, limits.max_nesting)
    if deep is not None:
        raise over_limit(limits, "max_nesting", "levels of nesting", line=text.count("\n", 0, deep) + 1)
    first = len(text) - len(text.lstrip(" \t\n\r"))
    line = text.count("\n", 0, first) + 1
    items = _json_array_items(text, first, limits) if text.startswith("[", first) else None
    if items is None:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return [], [Problem(exc.lineno, "", json_error(exc))]
        except (ValueError, RecursionError) as exc:
            return [], [Problem(1, "", json_error(exc))]
    else:
        value = [item for _, item, _ in items]
    if not isinstance(value, list):
        hint = ""
        if isinstance(value, dict):
            lists = [k for k, v in value.items() if isinstance(v, list)]
            if len(lists) == 1 and len(value) <= 3:
                hint = f' (the examples must be the array itself, not under "{lists[0]}"; or save them as JSON Lines)'
        return [], [
            Problem(line, "", f"must be a JSON array of objects like [{{...}}, {{...}}], got {type_name(value)}{hint}")
        ]
    if not value:
        return [], [Problem(line, "", "the JSON array is empty; it holds no examples")]
    assert items is not None  # json.loads accepts exactly the arrays _json_array_items reads
    records = []
    counted = first  # lines are counted incrementally: one pass over the text in all
    for index, (pos, item, end) in enumerate(items, start=1):
        line += text.count("\n", counted, pos)
        counted = pos
        if end - pos > limits.max_field_chars:
            long = longest_string(item, limits.max_field_chars)
            if long is not None:
                raise over_limit(limits, "max_field_chars", "characters", line=line, field=long[0])
        records.append(Record(line, item, item=index))
    return records, []


def _json_array_items(text: str, first: int, limits: DataLimits) -> list[tuple[int, object, int]] | None:
    """(start, value, end) of each item of the array opening at `first`; None when the text is not
    exactly one valid array (json.loads then names the error). LimitExceeded past max_rows items."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, object, int]] = []
    pos = _skip_ws(text, first + 1)
    try:
        if text.startswith("]", pos):
            pos += 1
        else:
            while True:
                if len(items) >= limits.max_rows:
                    raise over_limit(limits, "max_rows", "rows", line=text.count("\n", 0, pos) + 1)
                item, end = decoder.raw_decode(text, pos)
                items.append((pos, item, end))
                pos = _skip_ws(text, end)
                if text.startswith("]", pos):
                    pos += 1
                    break
                if not text.startswith(",", pos):
                    return None
                pos = _skip_ws(text, pos + 1)
    except (ValueError, RecursionError):
        return None
    return items if _skip_ws(text, pos) == len(text) else None


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


def parse_csv(text: str, limits: DataLimits | None = None) -> tuple[list[str], int, list[Record], list[Problem]]:
    """Columns, header line and rows, each row numbered by the line it starts on (header = line 1).

    LimitExceeded for a text, a header, a row count or a cell past `limits`, at the line it starts on.
    """
    limits = limits or DataLimits()
    if len(text) > limits.max_total_chars:
        raise over_limit(limits, "max_total_chars", "characters of text")
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
                if len(row) > limits.max_columns:
                    raise over_limit(limits, "max_columns", "columns", line=start)
                header, header_line = [v.strip() for v in row], start
                seen: set[str] = set()
                for name in header:
                    if name and name in seen:
                        return [], start, [], [Problem(start, "", f"the header names the column {name!r} twice")]
                    seen.add(name)
                continue
            extra = row[len(header) :]
            if len(row) < len(header) or any(v.strip() for v in extra):
                problems.append(Problem(start, "", f"has {len(row)} values, but the header has {len(header)} columns"))
                continue
            if len(records) >= limits.max_rows:
                raise over_limit(limits, "max_rows", "rows", line=start)
            for column, value in zip(header, row):
                if len(value) > limits.max_field_chars:
                    raise over_limit(limits, "max_field_chars", "characters", line=start, field=column)
            records.append(Record(start, {k: v for k, v in zip(header, row) if k}))
    except csv.Error as exc:
        hint = "; a quoted value that starts here is never closed" if "unexpected end of data" in str(exc) else ""
        problems.append(Problem(previous + 1, "", f"is not valid CSV: {exc}{hint}"))
    columns = [c for c in header or [] if c]
    if header is not None and not records and not problems:
        problems.append(Problem(header_line, "", "the file has a header but no rows"))
    return columns, header_line, records, problems


def parse_parquet(path: Path, name: str, limits: DataLimits | None = None) -> tuple[list[str], list[Record]]:
    """Columns and rows of a Parquet file; LimitExceeded from the metadata alone (rows, columns,
    uncompressed bytes) before any row is read, then per batch of rows before it becomes Python objects."""
    import pyarrow.parquet as pq

    limits = limits or DataLimits()
    try:
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        columns = [str(c) for c in pf.schema_arrow.names]
        leaves = [pf.schema.column(i) for i in range(len(pf.schema))]
    except Exception as exc:  # pyarrow raises several types for a corrupt file; all mean "unreadable"
        if _out_of_memory(exc):
            raise MemoryError(str(exc)) from None
        raise DatasetError(name, [Problem(0, "", f"is not a readable Parquet file ({exc})", unit="")]) from None
    if len(columns) > limits.max_columns:
        raise over_limit(limits, "max_columns", "columns")
    if meta.num_rows > limits.max_rows:
        raise LimitExceeded(
            Problem(
                0,
                "",
                f"has {meta.num_rows:,} rows, more than the limit of {limits.max_rows:,} (limit DATASET_MAX_ROWS)",
                unit="",
            )
        )
    uncompressed = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if uncompressed > limits.max_total_chars:
        raise LimitExceeded(
            Problem(
                0,
                "",
                f"unpacks to {uncompressed:,} bytes, more than the limit of "
                f"{limits.max_total_chars:,} characters (limit DATASET_MAX_TOTAL_CHARS)",
                unit="",
            )
        )
    # Strings stay dictionary-encoded while their lengths are checked: a value repeated in every
    # row is then held once, not once per row.
    text_leaves = [leaf.path for leaf in leaves if leaf.physical_type == "BYTE_ARRAY"]
    records: list[Record] = []
    total = 0
    try:
        pf = pq.ParquetFile(path, read_dictionary=text_leaves)
        for batch in pf.iter_batches(batch_size=1024):
            for column, array in zip(batch.schema.names, batch.columns):
                chars = _arrow_chars(array)
                total += int(chars.sum())
                widest = int(chars.argmax()) if len(chars) else 0
                if len(chars) and chars[widest] > limits.max_field_chars:
                    raise over_limit(
                        limits,
                        "max_field_chars",
                        "characters",
                        line=len(records) + widest + 1,
                        field=str(column),
                        unit="row",
                    )
                if total > limits.max_total_chars:
                    raise over_limit(limits, "max_total_chars", "characters of text", line=len(records) + 1, unit="row")
            for row in batch.to_pylist():
                records.append(Record(len(records) + 1, row))
    except (LimitExceeded, MemoryError):
        raise
    except Exception as exc:  # pyarrow raises several types for a corrupt file; all mean "unreadable"
        if _out_of_memory(exc):
            raise MemoryError(str(exc)) from None
        raise DatasetError(name, [Problem(0, "", f"is not a readable Parquet file ({exc})", unit="")]) from None
    if not records:
        raise DatasetError(name, [Problem(0, "", "the Parquet file has no rows", unit="")])
    return columns, records


def _arrow_chars(array: Any) -> NDArray[np.int64]:
    """The characters (bytes for binary) of each row of an Arrow array, nested values summed: a numpy array."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if isinstance(array, pa.ChunkedArray):
        parts = [_arrow_chars(chunk) for chunk in array.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if pa.types.is_dictionary(kind):
        sizes = _arrow_chars(array.dictionary)
        indices: NDArray[np.int64] = array.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return sizes[indices] if len(sizes) else np.zeros(len(array), dtype=np.int64)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        lengths: NDArray[np.int64] = pc.utf8_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return lengths
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        lengths = pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return lengths
    if pa.types.is_struct(kind):
        result = np.zeros(len(array), dtype=np.int64)
        for child in array.flatten():
            result += _arrow_chars(child)
        return result
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        offsets: NDArray[np.int64] = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        inner = _arrow_chars(array.values)
        running = np.concatenate([[0], np.cumsum(inner)])
        per_row: NDArray[np.int64] = running[offsets[1:]] - running[offsets[:-1]]
        return per_row
    return np.zeros(len(array), dtype=np.int64)  # numbers, booleans, dates: small whatever they hold


def _out_of_memory(exc: Exception) -> bool:
    """pyarrow's ways of running out of memory: an allocation, or (under the reading sandbox's address-space
    limit) a worker thread it could not start."""
    return type(exc).__name__ == "ArrowMemoryError" or "Failed to launch worker thread" in str(exc)
