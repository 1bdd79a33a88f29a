"""Dataset "bombs": small files that unpack into far more than they weigh, written by the tests
(never committed). `python -m tests.dataset_bombs DIR` writes them all, so a test can make them in
another process and measure its own memory without the cost of building them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# name -> the limit (setting) each one must be refused by
BOMBS = {
    "rows.parquet": "DATASET_MAX_ROWS",  # 2,000,000 rows of one repeated value in a few KB
    "huge_string.parquet": "DATASET_MAX_FIELD_CHARS",  # one 50 MB string, compressed to KB
    "deep.json": "DATASET_MAX_NESTING",  # 100,000 nested arrays
    "wide.csv": "DATASET_MAX_COLUMNS",  # 100,000 columns
    "many_lines.jsonl": "DATASET_MAX_ROWS",  # 1,000,000 tiny lines
}


def write_rows_parquet(path: Path, rows: int = 2_000_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    prompt = pa.DictionaryArray.from_arrays(pa.array([0] * rows, type=pa.int32()), pa.array(["Hi"]))
    completion = pa.DictionaryArray.from_arrays(pa.array([0] * rows, type=pa.int32()), pa.array(["Hello!"]))
    pq.write_table(
        pa.table({"prompt": prompt, "completion": completion}), path, compression="zstd", row_group_size=rows
    )


def write_huge_string_parquet(path: Path, chars: int = 50_000_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": ["Hi"], "completion": ["a" * chars]})
    pq.write_table(table, path, compression="zstd", use_dictionary=False)


def write_deep_json(path: Path, depth: int = 100_000) -> None:
    path.write_text("[" * depth + "]" * depth)


def write_wide_csv(path: Path, columns: int = 100_000) -> None:
    header = ",".join(f"c{i}" for i in range(columns))
    path.write_text(header + "\n" + ",".join("x" for _ in range(columns)) + "\n")


def write_many_lines_jsonl(path: Path, lines: int = 1_000_000) -> None:
    path.write_bytes(b"{}\n" * lines)


WRITERS = {
    "rows.parquet": write_rows_parquet,
    "huge_string.parquet": write_huge_string_parquet,
    "deep.json": write_deep_json,
    "wide.csv": write_wide_csv,
    "many_lines.jsonl": write_many_lines_jsonl,
}


def write_bombs(folder: Path) -> dict[str, Path]:
    """Every bomb written into `folder`; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, write in WRITERS.items():
        paths[name] = folder / name
        write(paths[name])
    return paths


if __name__ == "__main__":
    written = write_bombs(Path(sys.argv[1]))
    print(json.dumps({name: path.stat().st_size for name, path in written.items()}))
