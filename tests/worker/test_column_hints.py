"""The mapping step's hints: roles guessed from header names (never a column twice, never when unsure)
and a few short sample values per column, carried by SchemaUnknown from the loader."""

import pytest

from worker.data.column_hints import column_samples, guess_mapping, header_words
from worker.data.loading import load_dataset_file
from worker.data.problems import SchemaUnknown


@pytest.mark.parametrize(
    "columns, expected",
    [
        (["Customer Question", "Agent Answer"], {"prompt": "Customer Question", "response": "Agent Answer"}),
        (["user_query", "bot_reply", "ticket_id"], {"prompt": "user_query", "response": "bot_reply"}),
        (["UserMessage", "AssistantMessage"], {"prompt": "UserMessage", "response": "AssistantMessage"}),
        (["QUESTIONS", "answers", "Context"], {"prompt": "QUESTIONS", "response": "answers", "system": "Context"}),
        (
            ["instruction", "target", "System Prompt"],
            {"prompt": "instruction", "response": "target", "system": "System Prompt"},
        ),
        (["input", "user_input", "completion"], {"prompt": "input", "response": "completion"}),
        (["id", "title", "body"], {}),
    ],
)
def test_roles_are_guessed_from_header_words(columns, expected):
    assert guess_mapping(columns) == expected


def test_unsure_roles_stay_empty_and_no_column_is_guessed_twice():
    # Two columns name the prompt and neither is exactly "question": no prompt guess, the answer still is.
    assert guess_mapping(["first question", "second question", "answer"]) == {"response": "answer"}
    # A column that names two roles is guessed for none.
    assert guess_mapping(["question_answer", "notes"]) == {}
    guess = guess_mapping(["Prompt", "Response", "System", "Context"])
    assert guess == {"prompt": "Prompt", "response": "Response"}  # two system candidates: left empty
    assert len(set(guess.values())) == len(guess)


def test_header_words_normalise_case_separators_and_plurals():
    assert header_words("Customer_Question-Text") == ["customer", "question", "text"]
    assert header_words("agentAnswers") == ["agent", "answer"]
    assert header_words("class") == ["class"]  # "ss" is not a plural


def test_samples_are_short_non_empty_values_of_each_column():
    rows = [{"a": "", "b": "x" * 100}, "not an object", {"a": "one\n two", "b": 3}, {"a": "three"}, {"a": "four"}]
    samples = column_samples(rows, ["a", "b", "c"], per_column=2, max_chars=10)
    assert samples == {"a": ["one two", "three"], "b": ["x" * 9 + "…", "3"], "c": []}


def test_schema_unknown_carries_sample_values(tmp_path):
    path = tmp_path / "support.csv"
    path.write_text("Customer Question,Agent Answer\nWhere is my parcel?,On its way.\nCan I pay later?,Yes.\n")
    with pytest.raises(SchemaUnknown) as info:
        load_dataset_file(path)
    assert info.value.columns == ["Customer Question", "Agent Answer"]
    assert info.value.samples == {
        "Customer Question": ["Where is my parcel?", "Can I pay later?"],
        "Agent Answer": ["On its way.", "Yes."],
    }
