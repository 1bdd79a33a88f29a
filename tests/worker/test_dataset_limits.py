"""Limits on what reading a dataset may build (worker/data/limits.py), checked by every reader before
it builds the rows, and the child process that reads an untrusted file (worker/data/sandbox.py)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.dataset_bombs import BOMBS, write_bombs
from worker.data.limits import DataLimits, json_too_deep
from worker.data.loading import load_dataset_file
from worker.data.problems import DatasetError, SchemaUnknown
from worker.data.sandbox import load_dataset_file_limited
from worker.errors import InputError

PAIR = {"prompt": "Hi", "completion": "Hello!"}


def refusal(path: Path, limits: DataLimits, name: str | None = None) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset_file(path, name, limits=limits)
    assert len(info.value.problems) == 1
    return str(info.value)


def test_limits_are_positive_integers():
    assert DataLimits().max_rows == 200_000
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(InputError) as info:
            DataLimits(max_nesting=bad)
        assert info.value.field == "max_nesting"


def test_nesting_scan_skips_strings_and_finds_the_offset():
    assert json_too_deep('{"a": "[[[[[[[[[["}', 3) is None
    assert json_too_deep("[[[]]]", 3) is None
    text = '[\n[[["x"]]]]'
    assert json_too_deep(text, 3) == text.index('["x"')


def test_jsonl_rows_total_field_and_nesting_name_the_line_and_the_setting(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(PAIR) for _ in range(4)) + "\n")
    assert refusal(f, DataLimits(max_rows=3)) == "d.jsonl: line 4: has more than 3 rows (limit DATASET_MAX_ROWS)"
    assert refusal(f, DataLimits(max_total_chars=100)) == (
        "d.jsonl: line 3: has more than 100 characters of text (limit DATASET_MAX_TOTAL_CHARS)"
    )
    f.write_text(json.dumps(PAIR) + "\n" + json.dumps({**PAIR, "completion": "x" * 50}) + "\n")
    assert refusal(f, DataLimits(max_field_chars=20)) == (
        "d.jsonl: line 2: completion has more than 20 characters (limit DATASET_MAX_FIELD_CHARS)"
    )
    f.write_text(json.dumps(PAIR) + "\n" + json.dumps({**PAIR, "meta": [[[[{"a": 1}]]]]}) + "\n")
    assert refusal(f, DataLimits(max_nesting=4)) == (
        "d.jsonl: line 2: has more than 4 levels of nesting (limit DATASET_MAX_NESTING)"
    )
    assert load_dataset_file(f, limits=DataLimits(max_nesting=6)).rows == 2


def test_json_array_is_refused_before_it_is_built(tmp_path):
    f = tmp_path / "d.json"
    f.write_text("[\n" + ",\n".join(json.dumps(PAIR) for _ in range(5)) + "\n]")
    assert refusal(f, DataLimits(max_rows=3)) == "d.json: line 5: has more than 3 rows (limit DATASET_MAX_ROWS)"
    assert refusal(f, DataLimits(max_total_chars=50)) == (
        "d.json: has more than 50 characters of text (limit DATASET_MAX_TOTAL_CHARS)"
    )
    f.write_text("[\n" + json.dumps(PAIR) + ",\n" + json.dumps({**PAIR, "prompt": "y" * 30}) + "\n]")
    assert refusal(f, DataLimits(max_field_chars=29)) == (
        "d.json: line 3: prompt has more than 29 characters (limit DATASET_MAX_FIELD_CHARS)"
    )
    assert load_dataset_file(f, limits=DataLimits(max_field_chars=30)).rows == 2
    f.write_text("[" * 5000 + "]" * 5000)  # json itself would recurse past Python's stack
    assert refusal(f, DataLimits()) == "d.json: line 1: has more than 64 levels of nesting (limit DATASET_MAX_NESTING)"


def test_json_array_errors_read_as_before_with_the_item_by_item_reader(tmp_path):
    f = tmp_path / "d.json"
    for text, expected in [
        ("[" + json.dumps(PAIR) + ",]", "line 1: is not valid JSON"),
        ("[" + json.dumps(PAIR) + "] x", "line 1: is not valid JSON: Extra data"),
        ("[]", "the JSON array is empty"),
    ]:
        f.write_text(text)
        with pytest.raises(DatasetError) as info:
            load_dataset_file(f)
        assert expected in str(info.value)
    f.write_text(" [ " + json.dumps(PAIR) + " , " + json.dumps(PAIR) + " ] \n")
    assert load_dataset_file(f).rows == 2


def test_csv_columns_rows_and_cells(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("prompt,completion\nHi,Hello\nHi,Bye\nHi,Yo\n")
    assert refusal(f, DataLimits(max_rows=2)) == "d.csv: line 4: has more than 2 rows (limit DATASET_MAX_ROWS)"
    assert refusal(f, DataLimits(max_columns=1)) == (
        "d.csv: line 1: has more than 1 columns (limit DATASET_MAX_COLUMNS)"
    )
    assert refusal(f, DataLimits(max_field_chars=4)) == (
        "d.csv: line 2: completion has more than 4 characters (limit DATASET_MAX_FIELD_CHARS)"
    )
    assert refusal(f, DataLimits(max_total_chars=20)) == (
        "d.csv: has more than 20 characters of text (limit DATASET_MAX_TOTAL_CHARS)"
    )


def test_parquet_is_refused_from_its_metadata_then_per_batch(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["Hi"] * 5, "completion": ["Hello"] * 4 + ["z" * 40]}), f)
    assert refusal(f, DataLimits(max_rows=4)) == (
        "d.parquet: has 5 rows, more than the limit of 4 (limit DATASET_MAX_ROWS)"
    )
    assert refusal(f, DataLimits(max_columns=1)) == "d.parquet: has more than 1 columns (limit DATASET_MAX_COLUMNS)"
    assert refusal(f, DataLimits(max_field_chars=39)) == (
        "d.parquet: row 5: completion has more than 39 characters (limit DATASET_MAX_FIELD_CHARS)"
    )
    assert "more than the limit of 10 characters (limit DATASET_MAX_TOTAL_CHARS)" in refusal(
        f, DataLimits(max_total_chars=10)
    )
    loaded = load_dataset_file(f, limits=DataLimits(max_field_chars=40))
    assert loaded.rows == 5 and loaded.examples[4].messages[1]["content"] == "z" * 40


def test_parquet_nested_messages_are_counted_per_row(tmp_path):
    f = tmp_path / "chat.parquet"
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    long = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "w" * 30}]
    pq.write_table(pa.table({"messages": [short, short, long]}), f)
    assert refusal(f, DataLimits(max_field_chars=35)) == (
        "chat.parquet: row 3: messages has more than 35 characters (limit DATASET_MAX_FIELD_CHARS)"
    )
    assert load_dataset_file(f).examples[2].messages == long


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    return write_bombs(tmp_path_factory.mktemp("bombs"))


def test_bomb_files_are_small(bombs):
    sizes = {name: path.stat().st_size for name, path in bombs.items()}
    assert sizes["rows.parquet"] < 64_000 and sizes["huge_string.parquet"] < 64_000
    assert pq.ParquetFile(bombs["rows.parquet"]).metadata.num_rows == 2_000_000


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_every_bomb_is_refused_in_the_child_naming_its_limit(bombs, name, tmp_path):
    started = time.monotonic()
    with pytest.raises(DatasetError) as info:
        load_dataset_file_limited(bombs[name], name, normalized_path=tmp_path / "n.jsonl", memory_mb=1024, seconds=60)
    assert f"(limit {BOMBS[name]})" in str(info.value) and str(info.value).startswith(f"{name}: ")
    assert time.monotonic() - started < 30
    assert not (tmp_path / "n.jsonl").exists()


def test_child_writes_the_normalized_file_and_answers_a_summary(chat_file, tmp_path):
    out = tmp_path / "n.jsonl"
    summary = load_dataset_file_limited(chat_file, "chat.jsonl", normalized_path=out)
    loaded = load_dataset_file(chat_file)
    assert (summary.rows, summary.schema, summary.format, summary.sha256) == (
        loaded.rows,
        loaded.schema,
        loaded.format,
        loaded.sha256,
    )
    assert [json.loads(line) for line in out.read_text().splitlines()] == [ex.to_json() for ex in loaded.examples]


def test_child_keeps_located_errors_schema_unknown_and_config_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n{oops\n")
    with pytest.raises(DatasetError) as info:
        load_dataset_file_limited(bad, "up/bad.jsonl", normalized_path=tmp_path / "n.jsonl")
    with pytest.raises(DatasetError) as direct:
        load_dataset_file(bad, "bad.jsonl")
    assert str(info.value) == str(direct.value) and info.value.total == direct.value.total
    odd = tmp_path / "odd.csv"
    odd.write_text("question,reply\nHi,Hello\n")
    with pytest.raises(SchemaUnknown) as unknown:
        load_dataset_file_limited(odd, "odd.csv", normalized_path=tmp_path / "n.jsonl")
    assert unknown.value.columns == ["question", "reply"] and "line 1" in str(unknown.value)
    with pytest.raises(InputError) as config:
        load_dataset_file_limited(
            odd, "odd.csv", normalized_path=tmp_path / "n.jsonl", mapping={"prompt": "nope", "response": "reply"}
        )
    assert config.value.field == "prompt" and "column 'nope' is not in the file" in config.value.message
    mapped = load_dataset_file_limited(
        odd, "odd.csv", normalized_path=tmp_path / "n.jsonl", mapping={"prompt": "question", "response": "reply"}
    )
    assert mapped.schema == "mapped" and mapped.rows == 1


def test_child_out_of_memory_and_out_of_time_are_dataset_errors(bombs, tmp_path, monkeypatch):
    # The huge string read with no field limit needs its 50 MB several times over: past 300 MB of address space.
    roomy = DataLimits(max_field_chars=10**9, max_total_chars=10**9)
    with pytest.raises(DatasetError) as info:
        load_dataset_file_limited(
            bombs["huge_string.parquet"],
            "huge.parquet",
            normalized_path=tmp_path / "n.jsonl",
            limits=roomy,
            memory_mb=300,
        )
    assert str(info.value) == "huge.parquet: needs more than 300 MB to read (limit DATASET_PARSE_MEMORY_MB)"
    with pytest.raises(DatasetError) as info:  # with room, the same file is read and its example refused
        load_dataset_file_limited(
            bombs["huge_string.parquet"],
            "huge.parquet",
            normalized_path=tmp_path / "n.jsonl",
            limits=roomy,
            memory_mb=1024,
        )
    assert "row 1: the example has 50,000,002 characters, over the limit of 200,000" in str(info.value)
    with pytest.raises(DatasetError) as info:
        load_dataset_file_limited(
            bombs["many_lines.jsonl"], "many.jsonl", normalized_path=tmp_path / "n.jsonl", seconds=0.2
        )
    assert str(info.value) == "many.jsonl: took longer than 0.2 s to read (limit DATASET_PARSE_SECONDS)"


def test_child_limits_must_be_positive(chat_file, tmp_path):
    for kwargs, field in [
        ({"memory_mb": 0}, "memory_mb"),
        ({"seconds": 0}, "seconds"),
        ({"memory_mb": 1.5}, "memory_mb"),
    ]:
        with pytest.raises(InputError) as info:
            load_dataset_file_limited(chat_file, normalized_path=tmp_path / "n.jsonl", **kwargs)
        assert info.value.field == field


def test_bombs_module_writes_them_from_the_command_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tests.dataset_bombs", str(tmp_path)],
        capture_output=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert set(json.loads(done.stdout)) == set(BOMBS)


def test_parquet_value_repeated_by_dictionary_is_counted_per_row_before_it_is_copied(tmp_path):
    f = tmp_path / "repeated.parquet"
    indices = pa.array([0] * 3000, type=pa.int32())
    big = pa.DictionaryArray.from_arrays(indices, pa.array(["q" * 1000]))
    pq.write_table(pa.table({"prompt": big, "completion": pa.DictionaryArray.from_arrays(indices, pa.array(["a"]))}), f)
    assert f.stat().st_size < 20_000  # 3,000,000 characters once read
    assert refusal(f, DataLimits(max_total_chars=500_000)) == (
        "repeated.parquet: row 1: has more than 500,000 characters of text (limit DATASET_MAX_TOTAL_CHARS)"
    )
