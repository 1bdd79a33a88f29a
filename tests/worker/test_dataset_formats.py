"""Every format and schema the loader reads, the problems it reports (file, line or row, field),
and that all of them become the same training examples."""

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from worker.data.examples import Example
from worker.data.formats import FORMATS
from worker.data.loading import load_dataset_file
from worker.data.mapping import ColumnMapping
from worker.data.normalized import read_normalized_jsonl, write_normalized_jsonl
from worker.data.problems import DatasetError, SchemaUnknown
from worker.data.schemas import SCHEMAS
from worker.data.tokenization import IGNORE_INDEX, tokenize_examples
from worker.errors import InputError

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"


def problems(path, **kwargs) -> list[str]:
    """What a user sees for a refused file: `name, line N: field message`."""
    with pytest.raises(DatasetError) as err:
        load_dataset_file(path, **kwargs)
    return err.value.messages()


def write_parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def csv_text(header, rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def test_public_constants():
    assert FORMATS == ("jsonl", "json", "csv", "parquet")
    assert SCHEMAS == ("preference", "prompts", "messages", "sharegpt", "prompt_completion", "alpaca", "text")


# --- the corpus of bad files ---------------------------------------------------------------------


def test_a_json_syntax_error_names_its_line_and_column():
    assert problems(BAD / "broken_line.jsonl") == [
        "broken_line.jsonl, line 3: is not valid JSON: Expecting ',' delimiter at column 71"
    ]


def test_a_json_array_syntax_error_names_line_and_column():
    assert problems(BAD / "broken_array.json") == [
        "broken_array.json, line 4: is not valid JSON: Expecting ',' delimiter at column 3"
    ]


def test_wrong_role():
    assert problems(BAD / "wrong_role.jsonl") == [
        'wrong_role.jsonl, line 3: messages[1].role must be one of system, user, assistant, got "bot"'
    ]


def test_missing_keys():
    assert problems(BAD / "missing_key.jsonl") == [
        "missing_key.jsonl, line 2: messages[1].content is missing",
        "missing_key.jsonl, line 3: messages is missing (keys found: conversation)"
        " — line 1 has 'messages', so every line is read as chat examples",
    ]


def test_wrong_types():
    assert problems(BAD / "wrong_type.jsonl") == [
        "wrong_type.jsonl, line 4: completion must be a string, got int",
        "wrong_type.jsonl, line 5: prompt must be a string, got list",
    ]


def test_null_content():
    assert problems(BAD / "null_content.jsonl") == [
        "null_content.jsonl, line 2: messages[1].content must be a string, got null"
    ]


def test_a_conversation_without_an_assistant_turn():
    assert problems(BAD / "no_assistant.jsonl") == [
        "no_assistant.jsonl, line 2: messages has no assistant turn, so there is nothing to learn"
    ]


@pytest.mark.parametrize("name", ["empty.jsonl", "blank_lines.jsonl"])
def test_empty_files(name):
    assert problems(BAD / name) == [f"{name}, line 1: the file is empty"]


def test_empty_content(tmp_path):
    (tmp_path / "none.json").write_text("[]\n")
    assert problems(tmp_path / "none.json") == ["none.json, line 1: the JSON array is empty; it holds no examples"]
    (tmp_path / "header.csv").write_text("prompt,completion\n\n")
    assert problems(tmp_path / "header.csv") == ["header.csv, line 1: the file has a header but no rows"]
    write_parquet(tmp_path / "none.parquet", {"text": pa.array([], pa.string())})
    assert problems(tmp_path / "none.parquet") == ["none.parquet, the Parquet file has no rows"]


def test_invalid_utf8_names_line_and_byte():
    assert problems(BAD / "invalid_utf8.jsonl") == ["invalid_utf8.jsonl, line 2: is not valid UTF-8 (byte 47)"]
    assert problems(BAD / "invalid_utf8.csv") == ["invalid_utf8.csv, line 3: is not valid UTF-8 (byte 4)"]


def test_binary_junk_is_refused_clearly():
    assert problems(BAD / "binary_junk.jsonl") == [
        "binary_junk.jsonl, line 1: the file is binary, not JSON Lines text (a NUL byte at byte 79)"
    ]
    # The same bytes under any name: a clear DatasetError, never a crash.
    data = (BAD / "binary_junk.jsonl").read_bytes()
    for name in ("junk.json", "junk.csv", "junk.parquet", "junk.txt"):
        with pytest.raises(DatasetError):
            load_dataset_file(BAD / "binary_junk.jsonl", filename=name)
    assert data[:4] != b"PAR1"


def test_utf16_and_text_named_parquet():
    assert problems(BAD / "utf16.jsonl") == ["utf16.jsonl, line 1: the file is UTF-16 text; save it as UTF-8"]
    assert problems(BAD / "not_parquet.parquet") == [
        "not_parquet.parquet, is not a Parquet file (a Parquet file starts with PAR1)"
    ]


def test_unknown_columns_raise_schema_unknown_with_the_columns():
    with pytest.raises(SchemaUnknown) as err:
        load_dataset_file(BAD / "unknown_columns.csv")
    assert isinstance(err.value, DatasetError)
    assert err.value.columns == ["question", "reply"]
    message = str(err.value)
    assert message.startswith("unknown_columns.csv: line 1: the columns found (question, reply) match no known schema")
    for expected in (
        "messages (messages)",
        "sharegpt (conversations)",
        "prompt_completion (prompt, completion)",
        "alpaca (instruction, output, optional input)",
        "text (text)",
    ):
        assert expected in message


def test_the_filename_is_only_used_as_a_base_name():
    with pytest.raises(DatasetError) as err:
        load_dataset_file(BAD / "wrong_role.jsonl", filename="../../etc/passwd.jsonl")
    assert err.value.filename == "passwd.jsonl"
    assert str(err.value).startswith("passwd.jsonl: line 3: messages[1].role")
    assert err.value.messages() == [
        'passwd.jsonl, line 3: messages[1].role must be one of system, user, assistant, got "bot"'
    ]
    with pytest.raises(DatasetError) as err:
        load_dataset_file(BAD / "wrong_role.jsonl", filename="..\\..\\secret\\x.jsonl")
    assert err.value.filename == "x.jsonl"


def test_over_the_character_limit():
    assert problems(BAD / "too_long.jsonl", max_chars=1000) == [
        "too_long.jsonl, line 2: the example has 1,200 characters, over the limit of 1,000"
    ]
    assert load_dataset_file(BAD / "too_long.jsonl").rows == 2  # default limit: 200,000


def test_default_limit_is_200000_characters(tmp_path):
    long = {"messages": [{"role": "user", "content": "x" * 150_000}, {"role": "assistant", "content": "y" * 100_000}]}
    (tmp_path / "long.jsonl").write_text(json.dumps(long) + "\n")
    assert problems(tmp_path / "long.jsonl") == [
        "long.jsonl, line 1: the example has 250,000 characters, over the limit of 200,000"
    ]


def test_sharegpt_with_a_bad_from():
    assert problems(BAD / "bad_from.jsonl") == [
        'bad_from.jsonl, line 5: conversations[2].from must be one of system, human, user, gpt, assistant, got "robot"'
    ]


def test_alpaca_with_an_empty_output():
    assert problems(BAD / "alpaca_empty_output.csv") == ["alpaca_empty_output.csv, line 3: output is empty"]


def test_json_array_items_are_located_by_line_and_item():
    assert problems(BAD / "bad_item.json") == [
        "bad_item.json, line 3 (item 2): completion must be a string, got null",
        'bad_item.json, line 5 (item 3): must be a JSON object like {"prompt": "...", "completion": "..."}, got int',
    ]


def test_json_must_be_a_top_level_array():
    assert problems(BAD / "object_not_array.json") == [
        "object_not_array.json, line 1: must be a JSON array of objects like [{...}, {...}], got object "
        '(the examples must be the array itself, not under "data"; or save them as JSON Lines)'
    ]


def test_csv_rows_are_numbered_by_file_line():
    # Row 2 spans lines 3-4 (a quoted newline), so the bad row is on line 5.
    assert problems(BAD / "csv_columns.csv") == ["csv_columns.csv, line 5: has 3 values, but the header has 2 columns"]


def test_a_multi_line_csv_row_is_located_where_it_starts(tmp_path):
    (tmp_path / "m.csv").write_text('prompt,completion\r\n"one\r\ntwo\r\nthree",""\r\n\r\nok,fine\r\n')
    assert problems(tmp_path / "m.csv") == ["m.csv, line 2: completion is empty"]
    (tmp_path / "m.csv").write_text('prompt,completion\n"one\ntwo",x\n\n,,\nok,fine\n')
    loaded = load_dataset_file(tmp_path / "m.csv")
    assert [e.source for e in loaded.examples] == [2, 6]
    assert loaded.examples[0].messages[0]["content"] == "one\ntwo"


def test_csv_unclosed_quote_names_the_line_it_opens_on(tmp_path):
    (tmp_path / "q.csv").write_text('prompt,completion\nhello,world\n"never closed,x\nmore\n')
    assert problems(tmp_path / "q.csv") == [
        "q.csv, line 3: is not valid CSV: unexpected end of data; a quoted value that starts here is never closed"
    ]


def test_parquet_wrong_types_and_nulls_name_the_row(tmp_path):
    path = write_parquet(tmp_path / "pc.parquet", {"prompt": ["a", "b", None], "completion": [1, 2, 3]})
    assert problems(path) == [
        "pc.parquet, row 1: completion must be a string, got int",
        "pc.parquet, row 2: completion must be a string, got int",
        "pc.parquet, row 3: prompt must be a string, got null",
        "pc.parquet, row 3: completion must be a string, got int",
    ]


def test_parquet_alpaca_with_an_empty_output(tmp_path):
    path = write_parquet(
        tmp_path / "alpaca.parquet",
        {"instruction": ["a", "b", "c"], "input": [None, "", "x"], "output": ["1", "2", " "]},
    )
    assert problems(path) == ["alpaca.parquet, row 3: output is empty"]


def test_parquet_messages_with_a_bad_role(tmp_path):
    turns = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    path = write_parquet(
        tmp_path / "chat.parquet",
        {
            "messages": pa.array(
                [
                    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                    [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
                ],
                turns,
            )
        },
    )
    assert problems(path) == ['chat.parquet, row 2: messages[1].role must be one of system, user, assistant, got "bot"']


def test_a_corrupt_parquet_file(tmp_path):
    path = write_parquet(tmp_path / "ok.parquet", {"text": ["hello"] * 10})
    data = path.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    [message] = problems(tmp_path / "cut.parquet")
    assert message.startswith("cut.parquet, is not a readable Parquet file (")


def test_the_first_twenty_problems_and_the_total(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": i} for i in range(30)]
    (tmp_path / "many.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError) as err:
        load_dataset_file(tmp_path / "many.jsonl")
    assert err.value.total == 30 and len(err.value.problems) == 20
    assert err.value.messages()[19] == "many.jsonl, line 20: completion must be a string, got int"
    assert str(err.value).endswith("(and 27 more)")


def test_a_lone_surrogate_escape_is_refused(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"text": "bad \\ud800 char"}\n')
    assert problems(tmp_path / "s.jsonl") == [
        "s.jsonl, line 1: text holds an invalid character (a lone UTF-16 surrogate escape such as \\ud800)"
    ]


# --- format detection ----------------------------------------------------------------------------


def test_format_comes_from_extension_and_content(tmp_path):
    line = json.dumps({"prompt": "p", "completion": "c"})
    (tmp_path / "lines.json").write_text(f"{line}\n{line}\n")
    assert load_dataset_file(tmp_path / "lines.json").format == "jsonl"
    (tmp_path / "array.jsonl").write_text(f"[{line},\n {line}]\n")
    assert load_dataset_file(tmp_path / "array.jsonl").format == "json"
    (tmp_path / "lines.csv").write_text(f"{line}\n")
    assert load_dataset_file(tmp_path / "lines.csv").format == "jsonl"
    path = write_parquet(tmp_path / "named.jsonl", {"text": ["hi"]})
    assert load_dataset_file(path).format == "parquet"
    (tmp_path / "x.json").write_bytes(b"\xef\xbb\xbf" + f"[{line}]".encode())  # a UTF-8 BOM is fine
    assert load_dataset_file(tmp_path / "x.json").rows == 1


# --- schemas -------------------------------------------------------------------------------------


def test_each_schema_is_detected_and_normalised(tmp_path):
    cases = {
        "messages": {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"},
            ]
        },
        "sharegpt": {
            "conversations": [
                {"from": "system", "value": "S"},
                {"from": "human", "value": "U"},
                {"from": "gpt", "value": "A"},
            ]
        },
        "prompt_completion": {"prompt": "U", "completion": "A", "system": "S"},
        "alpaca": {"instruction": "U", "input": "", "output": "A", "system": "S"},
    }
    expected = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    for schema, record in cases.items():
        path = tmp_path / f"{schema}.jsonl"
        path.write_text(json.dumps(record) + "\n")
        loaded = load_dataset_file(path)
        assert (loaded.schema, loaded.format, loaded.rows) == (schema, "jsonl", 1)
        assert loaded.examples[0].messages == expected and loaded.examples[0].source == 1
        assert loaded.turns == {"system": 1, "user": 1, "assistant": 1} and loaded.chars == 3
    (tmp_path / "t.jsonl").write_text('\n{"text": "hello"}\n')
    loaded = load_dataset_file(tmp_path / "t.jsonl")
    assert loaded.schema == "text" and loaded.examples == [Example(2, text="hello")]


def test_alpaca_joins_instruction_and_input(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "Translate", "input": "bonjour", "output": "hello"}]))
    [ex] = load_dataset_file(tmp_path / "a.json").examples
    assert ex.messages == [
        {"role": "user", "content": "Translate\n\nbonjour"},
        {"role": "assistant", "content": "hello"},
    ]


def test_the_schema_most_records_match_wins(tmp_path):
    good = {"prompt": "p", "completion": "c"}
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in [good, good, {"text": "t"}, good]) + "\n")
    assert problems(tmp_path / "m.jsonl") == [
        "m.jsonl, line 3: prompt is missing (keys found: text)"
        " — line 1 has 'prompt' and 'completion', so every line is read as prompts and answers",
        "m.jsonl, line 3: completion is missing (keys found: text)",
    ]


# --- column mapping ------------------------------------------------------------------------------


def test_column_mapping_validation():
    assert ColumnMapping(prompt="q", response="a").to_dict() == {"prompt": "q", "response": "a"}
    assert ColumnMapping.from_dict({"text": "body", "prompt": ""}) == ColumnMapping(text="body")
    for kwargs, fld in [
        ({}, "prompt"),
        ({"prompt": "q"}, "response"),
        ({"response": "a"}, "prompt"),
        ({"text": "t", "prompt": "q"}, "prompt"),
        ({"prompt": "q", "response": "q"}, "response"),
        ({"prompt": "q", "response": "a", "system": "a"}, "system"),
        ({"text": 3}, "text"),
    ]:
        with pytest.raises(InputError) as err:
            ColumnMapping(**kwargs)
        assert err.value.field == fld, kwargs
    with pytest.raises(InputError) as err:
        ColumnMapping.from_dict({"prompt": "q", "answer": "a"})
    assert err.value.field == "answer"
    with pytest.raises(InputError):
        ColumnMapping.from_dict(["prompt"])


def test_a_mapping_naming_a_missing_column(tmp_path):
    with pytest.raises(InputError) as err:
        load_dataset_file(BAD / "unknown_columns.csv", mapping=ColumnMapping(prompt="question", response="answer"))
    assert err.value.field == "response"
    assert err.value.message == "column 'answer' is not in the file; its columns are: question, reply"


def test_mapped_rows_and_their_problems(tmp_path):
    loaded = load_dataset_file(BAD / "unknown_columns.csv", mapping=ColumnMapping(prompt="question", response="reply"))
    assert loaded.schema == "mapped" and loaded.rows == 2 and loaded.columns == ["question", "reply"]
    assert loaded.examples[1].source == 3
    assert loaded.examples[1].messages == [
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    (tmp_path / "body.jsonl").write_text('{"body": "some text"}\n{"body": 12}\n')
    assert problems(tmp_path / "body.jsonl", mapping=ColumnMapping(text="body")) == [
        "body.jsonl, line 2: body must be a string, got int"
    ]


# --- duplicates ----------------------------------------------------------------------------------


def test_duplicates_are_reported_and_can_be_dropped(tmp_path):
    a = {"prompt": "same", "completion": "answer"}
    b = {"prompt": "other", "completion": "answer"}
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [a, b, a, b, a]))
    loaded = load_dataset_file(tmp_path / "d.jsonl")
    assert loaded.rows == 5 and loaded.duplicates == [(3, 1), (4, 2), (5, 1)] and loaded.dropped_duplicates == 0
    dropped = load_dataset_file(tmp_path / "d.jsonl", drop_duplicates=True)
    assert dropped.rows == 2 and dropped.dropped_duplicates == 3
    assert [e.source for e in dropped.examples] == [1, 2]
    assert dropped.duplicates == [(3, 1), (4, 2), (5, 1)]


def test_duplicates_compare_normalised_content(tmp_path):
    # A blank input is no input: rows 2 and 3 normalise to the same example.
    rows = [("q", "", "a"), ("q", " ", "a"), ("q", "x", "a")]
    (tmp_path / "d.csv").write_text(csv_text(["instruction", "input", "output"], rows))
    loaded = load_dataset_file(tmp_path / "d.csv")
    assert loaded.duplicates == [(3, 2)]


# --- normalised JSONL ----------------------------------------------------------------------------


def test_normalized_jsonl_round_trip(tmp_path):
    examples = [
        Example(4, messages=[{"role": "user", "content": "é\u2028x"}, {"role": "assistant", "content": "y\n"}]),
        Example(9, text="plain\x85text"),
    ]
    out = tmp_path / "sub" / "n.jsonl"
    write_normalized_jsonl(examples, out)
    lines = out.read_text(encoding="utf-8").splitlines()  # one line per example, whoever splits them
    assert len(lines) == 2 and lines[1] == '{"text": "plain\\u0085text"}'
    back = read_normalized_jsonl(out)
    assert [e.to_json() for e in back] == [e.to_json() for e in examples]
    assert [e.source for e in back] == [1, 2]
    assert [p.name for p in out.parent.iterdir()] == ["n.jsonl"]  # no temporary file left


def test_normalized_jsonl_is_validated(tmp_path):
    (tmp_path / "n.jsonl").write_text('{"text": ""}\n{"other": 1}\n')
    with pytest.raises(DatasetError) as err:
        read_normalized_jsonl(tmp_path / "n.jsonl")
    assert err.value.messages() == [
        "n.jsonl, line 1: text is empty",
        "n.jsonl, line 2: messages is missing (keys found: other)",
    ]


# --- the same conversations in every format give the same training examples ----------------------

CONVERSATIONS = [
    (None, "hello world", "yes"),
    ("be brief", "what is the answer", '{"answer": "red"}'),
    (None, "Extract the city\n\nAda lives in Paris", "Paris"),
    ("reply please", "0 1 2 3", '4, 5, "6"'),
]


def _messages(system, user, assistant):
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def test_every_format_and_schema_trains_the_same(tmp_path, tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    files = {}
    files["messages.jsonl"] = tmp_path / "messages.jsonl"
    files["messages.jsonl"].write_text("".join(json.dumps({"messages": _messages(*c)}) + "\n" for c in CONVERSATIONS))
    sharegpt_from = {"system": "system", "user": "human", "assistant": "gpt"}
    files["sharegpt.json"] = tmp_path / "sharegpt.json"
    files["sharegpt.json"].write_text(
        json.dumps(
            [
                {"conversations": [{"from": sharegpt_from[m["role"]], "value": m["content"]} for m in _messages(*c)]}
                for c in CONVERSATIONS
            ],
            indent=2,
        )
    )
    files["pc.csv"] = tmp_path / "pc.csv"
    files["pc.csv"].write_text(
        csv_text(["system", "prompt", "completion"], [(s or "", u, a) for s, u, a in CONVERSATIONS])
    )
    instruction, inputs = zip(
        *[(u.split("\n\n")[0], u.split("\n\n")[1] if "\n\n" in u else None) for _, u, _ in CONVERSATIONS]
    )
    files["alpaca.parquet"] = write_parquet(
        tmp_path / "alpaca.parquet",
        {
            "instruction": list(instruction),
            "input": list(inputs),
            "output": [a for *_, a in CONVERSATIONS],
            "system": [s for s, *_ in CONVERSATIONS],
        },
    )
    files["mapped.csv"] = tmp_path / "mapped.csv"
    files["mapped.csv"].write_text(
        csv_text(
            ["id", "question", "answer", "persona"], [(i, u, a, s or "") for i, (s, u, a) in enumerate(CONVERSATIONS)]
        )
    )
    mapping = ColumnMapping(prompt="question", response="answer", system="persona")

    loaded = {
        name: load_dataset_file(path, mapping=mapping if name == "mapped.csv" else None) for name, path in files.items()
    }
    assert {n: (d.format, d.schema) for n, d in loaded.items()} == {
        "messages.jsonl": ("jsonl", "messages"),
        "sharegpt.json": ("json", "sharegpt"),
        "pc.csv": ("csv", "prompt_completion"),
        "alpaca.parquet": ("parquet", "alpaca"),
        "mapped.csv": ("csv", "mapped"),
    }
    expected = [{"messages": _messages(*c)} for c in CONVERSATIONS]
    for name, data in loaded.items():
        assert [e.to_json() for e in data.examples] == expected, name
    reference = tokenize_examples(tok, loaded["messages.jsonl"].examples, 256)
    assert len(reference) == 4 and all(ex.trained_tokens for ex in reference)
    for name, data in loaded.items():
        # Through the normalised file, as the engine reads it.
        normalized = tmp_path / f"{name}.normalized.jsonl"
        write_normalized_jsonl(data.examples, normalized)
        got = tokenize_examples(tok, read_normalized_jsonl(normalized), 256)
        assert [(e.input_ids, e.labels) for e in got] == [(e.input_ids, e.labels) for e in reference], name
    # The labels are the assistant turns only.
    first = reference[0]
    assert (
        tok.decode([i for i, label in zip(first.input_ids, first.labels) if label != IGNORE_INDEX]) == "yes<|im_end|>\n"
    )


def test_a_text_file_trains_every_token(tmp_path, tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    path = write_parquet(tmp_path / "t.parquet", {"text": ["The quick brown fox", "jumps over the lazy dog"]})
    loaded = load_dataset_file(path)
    assert loaded.schema == "text" and loaded.turns == {"system": 0, "user": 0, "assistant": 0}
    [a, b] = tokenize_examples(tok, loaded.examples, 256)
    assert a.labels == a.input_ids and IGNORE_INDEX not in a.labels
    assert a.input_ids[-1] == tok.eos_token_id
    assert tok.decode(a.input_ids) == "The quick brown fox<|im_end|>"
    short = tokenize_examples(tok, loaded.examples, 3)
    assert [len(e.input_ids) for e in short] == [3, 3] and short[0].labels == short[0].input_ids


def test_the_engine_trains_on_a_normalised_file_of_texts_and_conversations(tmp_path, tiny_llama):
    from worker.config import TrainConfig, TrainSpec
    from worker.engine import train
    from worker.reporting import MemoryReporter

    examples = [Example(i, text=f"colour {i} is red green blue") for i in range(4)]
    examples += [Example(9, messages=_messages(*c)) for c in CONVERSATIONS]
    data = tmp_path / "train.jsonl"
    write_normalized_jsonl(examples, data)
    config = TrainConfig(batch_size=4, epochs=1, learning_rate=1e-2, warmup_ratio=0.0, rank=4, alpha=8)
    reporter = MemoryReporter()
    result = train(TrainSpec(str(tiny_llama), str(data), str(tmp_path / "out"), config, device="cpu"), reporter)
    assert result.status == "succeeded" and result.steps_done == 2
    assert all(loss > 0 for loss in reporter.losses().values())
    # A broken normalised file is refused with its line, as before.
    data.write_text(data.read_text() + '{"text": 3}\n')
    with pytest.raises(DatasetError) as err:
        train(TrainSpec(str(tiny_llama), str(data), str(tmp_path / "out2"), config, device="cpu"), reporter)
    assert err.value.messages() == ["train.jsonl, line 9: text must be a string, got int"]


def test_a_line_of_another_format_is_told_which_line_decided_the_format(tmp_path):
    """A line without the keys of the file's format says which line has them, and how every line is read."""
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    other = {"prompt": "p", "completion": "c"}
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in [chat, chat, other, chat]) + "\n")
    assert problems(tmp_path / "m.jsonl") == [
        "m.jsonl, line 3: messages is missing (keys found: completion, prompt)"
        " — line 1 has 'messages', so every line is read as chat examples"
    ]


def test_an_unterminated_string_names_its_column_once(tmp_path):
    """The parser's "Unterminated string starting at" is followed by the column, never by "at at column"."""
    (tmp_path / "u.jsonl").write_text('{"text": "fine"}\n{"text": "no end}\n')
    assert problems(tmp_path / "u.jsonl") == [
        "u.jsonl, line 2: is not valid JSON: Unterminated string starting at column 10"
    ]
    (tmp_path / "u.csv").write_text('messages,id\n"[{""role"": ""user"", ""content"": ""hi}]",1\n')
    [message] = problems(tmp_path / "u.csv")
    assert message.endswith("the cell is not valid JSON (Unterminated string starting at column 30)")
    assert "at at" not in message
