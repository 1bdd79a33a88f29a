"""Preference pairs: TRL's prompt / chosen / rejected (strings, message lists, implicit prompt) and
OpenAI's DPO format are detected as schema "preference", normalised to {"messages", "chosen",
"rejected"} and read back equal; bad pairs are refused by file, line and field; token counts
cover both sides of each pair."""

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from worker.data.loading import load_dataset_file
from worker.data.mapping import ColumnMapping
from worker.data.normalized import read_normalized_jsonl, write_normalized_jsonl
from worker.data.problems import DatasetError
from worker.data.report import TokenProfile, token_profile
from worker.errors import InputError

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"

USER = {"role": "user", "content": "Name a colour."}
GOOD = {"role": "assistant", "content": "Red."}
BAD_ANSWER = {"role": "assistant", "content": "Seven."}
PAIR = {"messages": [USER], "chosen": [GOOD], "rejected": [BAD_ANSWER]}
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi."},
    {"role": "assistant", "content": "Hello."},
    USER,
]

SHAPES = {
    "trl_strings": ({"prompt": "Name a colour.", "chosen": "Red.", "rejected": "Seven."}, PAIR),
    "trl_strings_system": (
        {"system": "Be brief.", "prompt": "Name a colour.", "chosen": "Red.", "rejected": "Seven."},
        {**PAIR, "messages": [{"role": "system", "content": "Be brief."}, USER]},
    ),
    "trl_conversational": (
        {"prompt": HISTORY, "chosen": [GOOD], "rejected": [BAD_ANSWER]},
        {"messages": HISTORY, "chosen": [GOOD], "rejected": [BAD_ANSWER]},
    ),
    "trl_implicit_prompt": (
        {"chosen": HISTORY + [GOOD], "rejected": HISTORY + [BAD_ANSWER]},
        {"messages": HISTORY, "chosen": [GOOD], "rejected": [BAD_ANSWER]},
    ),
    "openai_dpo": (
        {"input": {"messages": HISTORY}, "preferred_output": [GOOD], "non_preferred_output": [BAD_ANSWER]},
        {"messages": HISTORY, "chosen": [GOOD], "rejected": [BAD_ANSWER]},
    ),
    # The normalised line itself uploads as it is (a downloaded preference dataset goes back up).
    "normalised": (
        {"messages": HISTORY, "chosen": [GOOD], "rejected": [BAD_ANSWER]},
        {"messages": HISTORY, "chosen": [GOOD], "rejected": [BAD_ANSWER]},
    ),
}


def problems(path) -> list[str]:
    with pytest.raises(DatasetError) as err:
        load_dataset_file(path)
    return err.value.messages()


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_is_detected_and_round_trips_through_normalised_jsonl(tmp_path, shape):
    record, expected = SHAPES[shape]
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps({**record, "ignored": 1}) + "\n")
    loaded = load_dataset_file(path)
    assert loaded.schema == "preference" and loaded.rows == 2
    assert [ex.to_json() for ex in loaded.examples] == [expected, expected]
    assert all(ex.is_preference for ex in loaded.examples)
    assert loaded.duplicates == [(2, 1)]  # the same pair twice, whatever the extra key
    roles = [m["role"] for m in expected["messages"] + expected["chosen"] + expected["rejected"]]
    assert loaded.turns == {r: 2 * roles.count(r) for r in ("system", "user", "assistant")}
    assert loaded.chars == 2 * sum(
        len(m["content"]) for m in expected["messages"] + expected["chosen"] + expected["rejected"]
    )
    out = tmp_path / "normalized.jsonl"
    write_normalized_jsonl(loaded.examples, out)
    back = read_normalized_jsonl(out)
    assert [ex.to_json() for ex in back] == [expected, expected] and [ex.source for ex in back] == [1, 2]


def test_pairs_in_csv_and_parquet(tmp_path):
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "chosen", "rejected"])
        writer.writerow(["Name a colour.", "Red.", "Seven."])
        writer.writerow([json.dumps(HISTORY), json.dumps([GOOD]), "Seven."])
    loaded = load_dataset_file(path)
    assert loaded.schema == "preference"
    assert [ex.to_json() for ex in loaded.examples] == [
        PAIR,
        {"messages": HISTORY, "chosen": [GOOD], "rejected": [BAD_ANSWER]},
    ]
    table = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table(
            {
                "prompt": ["Name a colour.", "Name a shape."],
                "chosen": ["Red.", "A circle."],
                "rejected": ["Seven.", None],
            }
        ),
        table,
    )
    assert problems(table) == ["pairs.parquet, row 2: rejected must be a string or a list of messages, got null"]


def test_columns_mapped_to_prompt_chosen_and_rejected(tmp_path):
    for kwargs, field in [
        ({"prompt": "q", "chosen": "a"}, "rejected"),
        ({"prompt": "q", "rejected": "b"}, "chosen"),
        ({"chosen": "a", "rejected": "b"}, "prompt"),
        ({"prompt": "q", "response": "r", "chosen": "a", "rejected": "b"}, "response"),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, "rejected"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "system": "q"}, "system"),
        ({"text": "t", "chosen": "a"}, "chosen"),
    ]:
        with pytest.raises(InputError) as err:
            ColumnMapping(**kwargs)
        assert err.value.field == field, kwargs
    path = tmp_path / "odd.jsonl"
    rows = [
        {"q": "Name a colour.", "good": "Red.", "bad": "Seven.", "persona": "Be brief."},
        {"q": "Name a shape.", "good": "A circle.", "bad": "A circle.", "persona": None},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mapping = ColumnMapping(prompt="q", chosen="good", rejected="bad", system="persona")
    with pytest.raises(DatasetError) as err:
        load_dataset_file(path, mapping=mapping)
    assert err.value.messages() == [
        "odd.jsonl, line 2: bad is the same as good: chosen and rejected are identical, so there is nothing to prefer"
    ]
    path.write_text(json.dumps(rows[0]) + "\n")
    loaded = load_dataset_file(path, mapping=mapping)
    assert loaded.schema == "preference"
    assert [ex.to_json() for ex in loaded.examples] == [
        {**PAIR, "messages": [{"role": "system", "content": "Be brief."}, USER]}
    ]


def test_bad_pairs_name_file_line_and_field():
    assert problems(BAD / "pref_missing_rejected.jsonl") == [
        "pref_missing_rejected.jsonl, line 2: rejected is missing (keys found: chosen, prompt)"
    ]
    assert problems(BAD / "pref_identical.jsonl") == [
        "pref_identical.jsonl, line 3: rejected is the same as chosen: chosen and rejected are identical, "
        "so there is nothing to prefer"
    ]
    assert problems(BAD / "pref_wrong_types.jsonl") == [
        "pref_wrong_types.jsonl, line 1: prompt must be a string or a list of messages, got int",
        "pref_wrong_types.jsonl, line 2: chosen[0] must be an object with role and content, got str",
        "pref_wrong_types.jsonl, line 3: rejected must be a string or a list of messages, got null",
    ]
    assert problems(BAD / "pref_prompt_not_user.jsonl") == [
        "pref_prompt_not_user.jsonl, line 2: prompt must end with a user turn (the answers follow it), "
        "ends with assistant",
        'pref_prompt_not_user.jsonl, line 3: chosen[0].role must be one of assistant, got "user"',
    ]
    assert problems(BAD / "openai_dpo_bad.jsonl") == [
        "openai_dpo_bad.jsonl, line 2: non_preferred_output is missing (keys found: input, preferred_output)",
        "openai_dpo_bad.jsonl, line 3: preferred_output must be a list of assistant messages, got str",
        'openai_dpo_bad.jsonl, line 4: input must be an object like {"messages": [...]}, got str',
    ]


def test_a_chat_line_among_pairs_is_reported_as_a_pair_missing_its_answers(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        {"prompt": "a", "chosen": "b", "rejected": "c"},
        {"prompt": "d", "chosen": "e", "rejected": "f"},
        {"messages": [USER, GOOD]},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert problems(path) == [
        "mixed.jsonl, line 3: chosen is missing (keys found: messages)"
        " — line 1 has 'chosen' and 'rejected', so every line is read as preference pairs",
        "mixed.jsonl, line 3: rejected is missing (keys found: messages)",
    ]


def test_token_profile_counts_both_sides_and_trains_only_the_answers(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    pairs = [
        ex
        for ex in load_pairs(
            [
                {
                    "prompt": HISTORY,
                    "chosen": [GOOD],
                    "rejected": [{"role": "assistant", "content": "Seven, eight, nine, ten."}],
                }
            ]
        )
    ]
    profile = token_profile(tok, pairs)
    assert len(profile.lengths) == len(profile.rejected_lengths) == 1
    assert profile.rejected_lengths[0] > profile.lengths[0]
    trained = lambda sample: "".join(t for t, b in sample if b)  # noqa: E731
    assert trained(profile.samples[0]) == "Red.<|im_end|>\n"  # the history's "Hello." is not trained
    assert trained(profile.rejected_samples[0]) == "Seven, eight, nine, ten.<|im_end|>\n"
    assert "Hello." in "".join(t for t, _ in profile.samples[0])
    report = profile.report(10**6)
    answer_tokens = [
        len(tok(t, add_special_tokens=False)["input_ids"])
        for t in (trained(profile.samples[0]), trained(profile.rejected_samples[0]))
    ]
    assert report.trained_tokens == sum(answer_tokens)
    assert report.truncated == 0 and profile.report(profile.lengths[0]).truncated == 1  # rejected side too long
    histogram = report.histogram()
    assert sum(histogram["counts"]) == sum(histogram["rejected_counts"]) == 1
    # Stored and read back; a profile stored before pairs existed reads with the rejected side None.
    again = TokenProfile.from_json(json.loads(json.dumps(profile.to_json())))
    assert again == profile
    old = TokenProfile.from_json({"lengths": [3], "spans": [[1, 3]], "samples": []})
    assert old.rejected_lengths is None and old.rejected_spans is None and not old.report(8).is_preference
    assert "rejected_counts" not in old.report(8).histogram()


def load_pairs(records):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pairs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return load_dataset_file(path).examples
