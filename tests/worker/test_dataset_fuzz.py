"""Whatever bytes arrive, under whatever name, the loader returns a dataset or refuses it with a
DatasetError / SchemaUnknown / InputError: never another exception."""

import io
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.data.loading import LoadedDataset, load_dataset_file
from worker.data.mapping import ColumnMapping
from worker.data.normalized import read_normalized_jsonl, write_normalized_jsonl
from worker.data.problems import DatasetError, SchemaUnknown
from worker.errors import InputError

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".txt")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Keys from the known schemas come up often, so that random records get deep into validation.
KEYS = st.sampled_from(
    [
        "messages",
        "role",
        "content",
        "conversations",
        "from",
        "value",
        "prompt",
        "completion",
        "instruction",
        "input",
        "output",
        "system",
        "text",
    ]
) | st.text(max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.sampled_from(["user", "assistant", "system", "human", "gpt", "", " "])
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5), max_leaves=20
)
# Records shaped like each schema, mostly valid, so that loading succeeds often enough to matter.
TEXTISH = st.text(min_size=1, max_size=12) | st.text(min_size=1, max_size=12) | SCALARS


def _turns(role_key, content_key, roles):
    turn = st.fixed_dictionaries({role_key: st.sampled_from(roles), content_key: TEXTISH})
    return st.lists(turn, min_size=1, max_size=4)


SHAPED = st.one_of(
    st.fixed_dictionaries({"messages": _turns("role", "content", ["user", "assistant", "assistant", "system", "bot"])}),
    st.fixed_dictionaries(
        {"conversations": _turns("from", "value", ["human", "gpt", "gpt", "system", "robot"])},
        optional={"system": TEXTISH},
    ),
    st.fixed_dictionaries({"prompt": TEXTISH, "completion": TEXTISH}, optional={"system": TEXTISH}),
    st.fixed_dictionaries({"instruction": TEXTISH, "output": TEXTISH}, optional={"input": TEXTISH, "system": TEXTISH}),
    st.fixed_dictionaries({"text": TEXTISH}),
)
RECORDS = st.lists(SHAPED | SHAPED | st.dictionaries(KEYS, JSON, max_size=5) | JSON, max_size=6)
MAPPINGS = (
    st.none()
    | st.builds(ColumnMapping, text=KEYS.filter(bool))
    | st.builds(
        ColumnMapping,
        prompt=st.just("prompt"),
        response=st.sampled_from(["completion", "output", "x"]),
        system=st.none() | st.just("system"),
    )
)


def check(data: bytes, suffix: str, mapping=None, **kwargs):
    """Load the bytes under a name; only the three refusal types may escape, and a loaded
    dataset survives the trip through normalised JSONL unchanged."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            loaded = load_dataset_file(path, f"../x/data{suffix}", mapping=mapping, **kwargs)
        except SchemaUnknown as exc:
            assert isinstance(exc.columns, list) and exc.problems
            return None
        except DatasetError as exc:
            assert exc.filename == f"data{suffix}" and exc.problems and exc.total >= len(exc.problems)
            for problem in exc.problems:
                str(problem)
            return None
        except InputError as exc:
            assert mapping is not None and exc.field in ("text", "prompt", "response", "system")
            return None
        assert isinstance(loaded, LoadedDataset) and loaded.rows == len(loaded.examples) > 0
        normalized = Path(tmp) / "n.jsonl"
        write_normalized_jsonl(loaded.examples, normalized)
        assert [e.to_json() for e in read_normalized_jsonl(normalized)] == [e.to_json() for e in loaded.examples]
        return loaded


@FAST
@given(data=st.binary(max_size=600), suffix=st.sampled_from(EXTENSIONS))
def test_random_bytes(data, suffix):
    check(data, suffix)


@FAST
@given(data=st.binary(max_size=300), suffix=st.sampled_from(EXTENSIONS))
def test_random_bytes_that_claim_to_be_parquet(data, suffix):
    check(b"PAR1" + data + b"PAR1", suffix)


@FAST
@given(value=JSON, suffix=st.sampled_from(EXTENSIONS), mapping=MAPPINGS)
def test_a_random_json_value_as_one_line(value, suffix, mapping):
    check(json.dumps(value).encode(), suffix, mapping)


@FAST
@given(records=RECORDS, suffix=st.sampled_from(EXTENSIONS), mapping=MAPPINGS, drop=st.booleans())
def test_random_records_as_jsonl(records, suffix, mapping, drop):
    check("".join(json.dumps(r) + "\n" for r in records).encode(), suffix, mapping, drop_duplicates=drop)


@FAST
@given(records=RECORDS, suffix=st.sampled_from(EXTENSIONS), indent=st.sampled_from([None, 2]), mapping=MAPPINGS)
def test_random_records_as_a_json_array(records, suffix, indent, mapping):
    check(json.dumps(records, indent=indent).encode(), suffix, mapping, max_chars=50)


@FAST
@given(
    header=st.lists(KEYS, min_size=1, max_size=4),
    rows=st.lists(
        st.lists(st.text(max_size=12) | st.sampled_from(["", "[]", '[{"role": "user"}]']), max_size=5), max_size=5
    ),
    suffix=st.sampled_from([".csv", ".txt"]),
    mapping=MAPPINGS,
)
def test_random_csv(header, rows, suffix, mapping):
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    check(buf.getvalue().encode("utf-8", errors="surrogatepass"), suffix, mapping)


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(
        SHAPED | st.dictionaries(KEYS, st.none() | st.integers() | st.text(max_size=10), min_size=1, max_size=4),
        min_size=1,
        max_size=5,
    ),
    mapping=MAPPINGS,
)
def test_random_parquet(records, mapping):
    sink = io.BytesIO()
    try:
        table = pa.Table.from_pylist(records)
    except (pa.ArrowException, ValueError, OverflowError):
        return  # mixed types pyarrow cannot put in one column: no such file exists
    pq.write_table(table, sink)
    check(sink.getvalue(), ".parquet", mapping)


def test_valid_random_looking_files_load():
    """The fuzz helper itself accepts good data (so the properties above are not vacuous)."""
    line = json.dumps({"prompt": "p", "completion": "c"})
    for suffix in (".jsonl", ".json", ".csv", ".txt"):
        assert check(f"{line}\n{line}\n".encode(), suffix).rows == 2
    assert check(b"prompt,completion\np,c\n", ".csv").schema == "prompt_completion"


# --- valid data loads, and loads the same, in every format ----------------------------------------

GOOD_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\n\t"), min_size=1, max_size=12
).filter(str.strip)
OPTIONAL_TEXT = st.none() | GOOD_TEXT


@st.composite
def conversations(draw):
    system = draw(OPTIONAL_TEXT)
    turns = draw(st.lists(st.tuples(GOOD_TEXT, GOOD_TEXT), min_size=1, max_size=3))
    out = [{"role": "system", "content": system}] if system else []
    for user, assistant in turns:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return out


def _sharegpt(messages):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages]}


VALID = {
    "messages": conversations().map(lambda m: {"messages": m}),
    "sharegpt": conversations().map(_sharegpt),
    "prompt_completion": st.fixed_dictionaries({"prompt": GOOD_TEXT, "completion": GOOD_TEXT, "system": OPTIONAL_TEXT}),
    "alpaca": st.fixed_dictionaries(
        {"instruction": GOOD_TEXT, "input": OPTIONAL_TEXT, "output": GOOD_TEXT, "system": OPTIONAL_TEXT}
    ),
    "text": st.fixed_dictionaries({"text": GOOD_TEXT}),
}


def reference(schema, record):
    """The normalised example, worked out independently of the loader."""
    if schema == "messages":
        return {"messages": record["messages"]}
    if schema == "sharegpt":
        roles = {"system": "system", "human": "user", "gpt": "assistant"}
        return {"messages": [{"role": roles[t["from"]], "content": t["value"]} for t in record["conversations"]]}
    if schema == "text":
        return {"text": record["text"]}
    user = record.get("prompt") or (record["instruction"] + (f"\n\n{record['input']}" if record["input"] else ""))
    system = [{"role": "system", "content": record["system"]}] if record["system"] else []
    return {
        "messages": system
        + [
            {"role": "user", "content": user},
            {"role": "assistant", "content": record.get("completion") or record.get("output")},
        ]
    }


@st.composite
def valid_files(draw):
    schema = draw(st.sampled_from(sorted(VALID)))
    return schema, draw(st.lists(VALID[schema], min_size=1, max_size=5))


@settings(max_examples=100, deadline=None)
@given(case=valid_files())
def test_valid_records_load_the_same_in_every_format(case):
    import csv

    schema, records = case
    files = {
        ".jsonl": "".join(json.dumps(r) + "\n" for r in records).encode(),
        ".json": json.dumps(records, indent=1).encode(),
    }
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), sink)
    files[".parquet"] = sink.getvalue()
    if schema not in ("messages", "sharegpt"):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
        files[".csv"] = buf.getvalue().encode()
    expected = [reference(schema, r) for r in records]
    for suffix, data in files.items():
        loaded = check(data, suffix)
        assert loaded is not None, suffix
        assert (loaded.schema, loaded.rows) == (schema, len(records)), suffix
        assert [e.to_json() for e in loaded.examples] == expected, suffix
