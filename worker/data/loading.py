"""Loading a dataset file of any format and schema: `load_dataset_file` reads, validates and
normalises it into Examples and the figures the dataset page shows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.data.column_hints import column_samples
from worker.data.examples import ROLES, Example, Record
from worker.data.formats import ParsedFile, parse_file
from worker.data.jsonl import BOM
from worker.data.limits import DataLimits
from worker.data.mapping import ColumnMapping
from worker.data.problems import DatasetError, Problem, SchemaUnknown, base_name, type_name
from worker.data.schemas import (
    SCHEMA_EXAMPLES,
    SCHEMA_KEYS,
    convert_record,
    detect_schema,
    format_reason,
    matches_schema,
)
from worker.errors import InputError

DEFAULT_MAX_CHARS = 200_000


@dataclass
class LoadedDataset:
    """A validated file, normalised to examples, and what the dataset page shows about it."""

    examples: list[Example]
    format: str
    schema: str  # one of SCHEMAS, or "mapped" (columns mapped by the user; "preference" when mapped to pairs)
    columns: list[str]
    rows: int  # examples kept
    duplicates: list[tuple[int, int]]  # (line of the duplicate, line of its first occurrence)
    dropped_duplicates: int
    sha256: str
    turns: dict[str, int]
    chars: int


def load_dataset_file(
    path: str | Path,
    filename: str | None = None,
    *,
    mapping: ColumnMapping | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    drop_duplicates: bool = False,
    limits: DataLimits | None = None,
    progress: Callable[[str, int], object] | None = None,
) -> LoadedDataset:
    """Read, validate and normalise a dataset file of any supported format and schema.

    `filename` (the user's name for the file; only its base name is used, in messages and to read
    the extension) defaults to the path's name. Raises DatasetError listing the problems by line
    (or row) and field, SchemaUnknown (a DatasetError carrying `.columns`) when the columns match
    no schema and no mapping is given, or InputError when `mapping` names a missing column.
    `limits` (DataLimits() when None) caps what parsing may build; this runs in the caller's
    process, so a server reads untrusted files through `sandbox.load_dataset_file_limited`.
    `progress(stage, rows)`, when given, is called as each stage starts.
    """
    progress = progress or (lambda stage, rows: None)
    path = Path(path)
    name = base_name(filename) if filename else path.name
    if isinstance(mapping, dict):
        mapping = ColumnMapping.from_dict(mapping)
    if mapping is not None and not isinstance(mapping, ColumnMapping):
        raise InputError("mapping", f"must be a ColumnMapping, got {type_name(mapping)}")
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise InputError("max_chars", f"must be a positive integer, got {max_chars!r}")
    raw = path.read_bytes()
    sha256 = hashlib.sha256(raw).hexdigest()
    if not raw.removeprefix(BOM).strip():
        raise DatasetError(name, [Problem(1, "", "the file is empty")])
    progress("reading the file", 0)
    parsed = parse_file(path, raw, name, limits)
    progress("checking the rows", len(parsed.records))
    schema = _choose_schema(parsed, mapping, name)
    examples = _convert_records(parsed, schema, mapping, max_chars, name)
    if mapping is not None and mapping.is_preference:
        schema = "preference"  # every pair reads alike, however its columns were named
    progress("looking for duplicates", len(examples))
    kept, duplicates = deduplicate_examples(examples, drop_duplicates)
    turns = {r: 0 for r in ROLES}
    for ex in kept:  # a pair counts its prompt's turns and both answers' turns
        for m in (ex.messages or []) + (ex.chosen or []) + (ex.rejected or []):
            turns[m["role"]] += 1
    return LoadedDataset(
        examples=kept,
        format=parsed.format,
        schema=schema,
        columns=parsed.columns,
        rows=len(kept),
        duplicates=duplicates,
        dropped_duplicates=len(examples) - len(kept),
        sha256=sha256,
        turns=turns,
        chars=sum(ex.chars for ex in kept),
    )


def _choose_schema(parsed: ParsedFile, mapping: ColumnMapping | None, name: str) -> str:
    """ "mapped" with a mapping, else the schema most records match; SchemaUnknown when none does."""
    if mapping is not None:
        if parsed.columns:
            mapping.check_columns(parsed.columns)
        elif parsed.problems:
            raise DatasetError(name, parsed.problems)
        return "mapped"
    detected = detect_schema(parsed.records)
    if detected is None:
        if parsed.problems:
            raise DatasetError(name, parsed.problems)
        samples = column_samples((r.value for r in parsed.records), parsed.columns)
        if parsed.columns and parsed.format == "parquet":
            raise SchemaUnknown(name, parsed.columns, 0, "", samples=samples)
        if parsed.columns:
            first = parsed.header_line or next(r.line for r in parsed.records if isinstance(r.value, dict))
            raise SchemaUnknown(name, parsed.columns, first, samples=samples)
    return detected or "messages"  # no columns at all: report against the default schema


def _convert_records(
    parsed: ParsedFile, schema: str, mapping: ColumnMapping | None, max_chars: int, name: str
) -> list[Example]:
    """Every record checked and converted; DatasetError with all the problems, sorted by position."""
    problems = parsed.problems
    examples: list[Example] = []
    first = _first_match(parsed, schema)
    reason = (
        format_reason(schema, first, _location(first, parsed.unit), "item" if first.item else parsed.unit or "line")
        if first is not None
        else ""
    )
    for rec in parsed.records:
        # A record without the keys of the file's format hears why it is read so (once, on its first problem).
        mismatch = reason and isinstance(rec.value, dict) and not matches_schema(schema, rec.value)
        because = [reason] if mismatch else []

        def report(field_: str, message: str, rec: Record = rec, because: list[str] = because) -> None:
            if because:
                message = f"{message} — {because.pop()}"
            problems.append(Problem(rec.line, field_, message, unit=parsed.unit, item=rec.item))

        if not isinstance(rec.value, dict):
            like = f"like {SCHEMA_EXAMPLES[schema]}" if schema in SCHEMA_EXAMPLES else "with the mapped columns"
            report("", f"must be a JSON object {like}, got {type_name(rec.value)}")
            continue
        example = convert_record(schema, rec.value, report, text_cells=parsed.format == "csv", mapping=mapping)
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
    return examples


def _first_match(parsed: ParsedFile, schema: str) -> Record | None:
    """The first record holding `schema`'s keys (None for a mapping, or when every record lacks them)."""
    if schema not in SCHEMA_KEYS:
        return None
    return next((r for r in parsed.records if isinstance(r.value, dict) and matches_schema(schema, r.value)), None)


def _location(record: Record, unit: str) -> str:
    """Where a record is, as problems say it: "line 3", "row 2", "line 1 (item 4)"."""
    where = f"{unit or 'line'} {record.line}"
    return f"{where} (item {record.item})" if record.item is not None else where


def deduplicate_examples(examples: list[Example], drop: bool) -> tuple[list[Example], list[tuple[int, int]]]:
    """(examples kept, (line of each duplicate, line of its first occurrence)); duplicates kept unless `drop`.
    Two examples are duplicates when their normalised JSON is identical."""
    duplicates: list[tuple[int, int]] = []
    first_seen: dict[bytes, int] = {}
    kept: list[Example] = []
    for ex in examples:
        key = hashlib.sha256(json.dumps(ex.to_json(), ensure_ascii=False, sort_keys=True).encode()).digest()
        if key in first_seen:
            duplicates.append((ex.source, first_seen[key]))
            if drop:
                continue
        else:
            first_seen[key] = ex.source
        kept.append(ex)
    return kept, duplicates


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
