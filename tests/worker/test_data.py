import json

import pytest
from transformers import AutoTokenizer

from tests.conftest import write_jsonl
from worker.data.loading import load_dataset_file
from worker.data.normalized import read_normalized_jsonl
from worker.data.problems import DatasetError
from worker.data.tokenization import IGNORE_INDEX, tokenize_conversation

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def problems_of(path):
    with pytest.raises(DatasetError) as err:
        read_normalized_jsonl(path)
    return [str(p) for p in err.value.problems]


def test_valid_file_reads_and_summarises(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", [GOOD, GOOD, ""])
    assert [ex.messages for ex in read_normalized_jsonl(path)] == [GOOD["messages"]] * 2
    summary = load_dataset_file(path)
    assert summary.rows == 2 and summary.schema == "messages"
    assert summary.turns == {"system": 0, "user": 2, "assistant": 2}
    assert len(summary.sha256) == 64


def test_each_problem_names_line_and_field(tmp_path):
    bad_role = {"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}
    no_assistant = {"messages": [{"role": "user", "content": "x"}]}
    wrong_type = {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}
    path = write_jsonl(
        tmp_path / "bad.jsonl", [GOOD, '{"messages": [', bad_role, no_assistant, wrong_type, {"txt": "x"}, "[1, 2]"]
    )
    assert problems_of(path) == [
        "line 2: is not valid JSON: Expecting value at column 15",
        'line 3: messages[1].role must be one of system, user, assistant, got "bot"',
        "line 4: messages has no assistant turn, so there is nothing to learn",
        "line 5: messages[0].content must be a string, got int",
        "line 6: messages is missing (keys found: txt)",
        'line 7: must be a JSON object like {"messages": [...]}, got list',
    ]


def test_empty_and_non_utf8_files(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"\n \n")
    assert problems_of(tmp_path / "empty.jsonl") == ["line 1: the file is empty"]
    (tmp_path / "latin.jsonl").write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe\n")
    assert problems_of(tmp_path / "latin.jsonl") == ["line 2: is not valid UTF-8 (byte 1)"]


def test_error_shows_first_twenty_and_the_total(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", ["nope"] * 30)
    with pytest.raises(DatasetError) as err:
        read_normalized_jsonl(path)
    assert len(err.value.problems) == 20 and err.value.total == 30
    assert err.value.messages()[0].startswith("many.jsonl, line 1:")


def test_labels_cover_assistant_turns_only(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "what"},
        {"role": "assistant", "content": "no"},
    ]
    ex = tokenize_conversation(tok, messages, 512)
    trained = tok.decode([i for i, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX])
    assert trained == "yes<|im_end|>\nno<|im_end|>\n"
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(messages, tokenize=False)
    # Truncation keeps ids and labels aligned.
    short = tokenize_conversation(tok, messages, 10)
    assert len(short.input_ids) == len(short.labels) == 10
