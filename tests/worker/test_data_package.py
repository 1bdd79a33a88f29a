"""The data package's boundaries: training never loads the CSV / Parquet readers, and one list of
accepted file extensions."""

import subprocess
import sys
from pathlib import Path

import pytest

from worker.data.formats import EXTENSIONS, FORMATS, format_for_filename
from worker.data.problems import DatasetError

ROOT = Path(__file__).resolve().parents[2]


def test_training_does_not_import_the_file_format_readers():
    code = (
        "import sys, worker.engine, worker.cli; "
        "print(sorted(m for m in ('worker.data.formats', 'worker.data.loading', 'csv', 'pyarrow') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_extension_names_a_known_format():
    assert set(EXTENSIONS.values()) == set(FORMATS)
    assert all(ext.startswith(".") and ext == ext.lower() for ext in EXTENSIONS)


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("a.jsonl", "jsonl"),
        ("a.NDJSON", "jsonl"),
        ("dir/a.json", "json"),
        ("a.csv", "csv"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
    ],
)
def test_format_for_filename(name, fmt):
    assert format_for_filename(name) == fmt


@pytest.mark.parametrize("name, shown", [("C:\\data\\notes.txt", "the extension .txt"), ("README", "no extension")])
def test_an_unknown_extension_names_the_file_and_the_accepted_ones(name, shown):
    with pytest.raises(DatasetError) as err:
        format_for_filename(name)
    message = str(err.value)
    assert message.startswith(f"{Path(name.replace(chr(92), '/')).name}: has {shown}; accepted extensions: ")
    assert all(ext in message for ext in EXTENSIONS)
