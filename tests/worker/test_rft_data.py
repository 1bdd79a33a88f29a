"""OpenAI's reinforcement format: rows of `messages` ending with a user turn plus any fields the graders read,
detected like the other schemas, checked by line and field, and kept whole through the normalised file."""

from __future__ import annotations

import json

import pytest

from worker.data.loading import load_dataset_file
from worker.data.normalized import read_normalized_jsonl, write_normalized_jsonl
from worker.data.problems import DatasetError

ROWS = [
    {"messages": [{"role": "user", "content": "What is 6 x 7?"}], "answer": "42", "kind": "math"},
    {
        "messages": [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "Capital of France?"},
        ],
        "answer": {"city": "Paris"},
        "tags": ["geo"],
    },
]


def _write(tmp_path, rows, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompts_are_detected_and_keep_their_fields(tmp_path):
    loaded = load_dataset_file(_write(tmp_path, ROWS))
    assert loaded.schema == "prompts" and loaded.rows == 2
    first, second = loaded.examples
    assert first.is_prompt and first.item == {"answer": "42", "kind": "math"}
    assert second.messages[0] == {"role": "system", "content": "Answer in JSON."}
    assert second.item == {"answer": {"city": "Paris"}, "tags": ["geo"]}
    normalized = tmp_path / "normalized.jsonl"
    write_normalized_jsonl(loaded.examples, normalized)
    again = read_normalized_jsonl(normalized)
    assert [(e.messages, e.item) for e in again] == [(e.messages, e.item) for e in loaded.examples]


def test_a_prompt_that_does_not_end_with_a_user_turn_is_located(tmp_path):
    answered = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "x": 1}
    with pytest.raises(DatasetError) as caught:
        load_dataset_file(_write(tmp_path, [*ROWS, ROWS[0], answered]))
    assert [str(p) for p in caught.value.problems] == [
        "line 4: messages must end with a user message: the model's answer to it is what the graders score"
        " — line 1 has 'messages', so every line is read as prompts to reward"
    ]


def test_a_chat_file_with_one_unanswered_line_stays_a_chat_file(tmp_path):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    with pytest.raises(DatasetError, match="line 2: messages has no assistant turn"):
        load_dataset_file(_write(tmp_path, [chat, ROWS[0]]))
