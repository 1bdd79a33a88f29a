"""Graders: OpenAI's shapes checked with located errors, the text metrics held to NLTK and rouge-score, the
formula parsed without eval, templates, and a sample's reward with each grader type."""

from __future__ import annotations

import random
import re

import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from nltk.translate.gleu_score import sentence_gleu
from nltk.translate.meteor_score import single_meteor_score
from rouge_score import rouge_scorer

from worker.errors import InputError
from worker.graders import text_metrics
from worker.graders.formula import FormulaError, parse_formula
from worker.graders.scoring import Scorer, judge_label, judge_score
from worker.graders.spec import MultiGrader, grader_json, parse_grader
from worker.graders.templates import MissingVariable, render_template, sample_namespace

VOCAB = "the a cat dog sat on mat red blue , . is was 42 json".split()


def _pairs(count: int) -> list[tuple[str, str]]:
    rng = random.Random(7)
    sentence = lambda: " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 14)))
    return [(sentence(), sentence()) for _ in range(count)]


class _ExactOnly:
    """NLTK's METEOR with its stem and WordNet stages matching nothing: exact matches only, as ours."""

    def stem(self, word: str) -> str:
        return word

    def synsets(self, *args: object, **kwargs: object) -> list[object]:
        return []


def test_bleu_gleu_meteor_match_nltk():
    for output, reference in _pairs(200):
        hyp, ref = text_metrics.words(output), text_metrics.words(reference)
        expected_bleu = sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method1)
        assert text_metrics.bleu(output, reference) == pytest.approx(expected_bleu, abs=1e-12)
        assert text_metrics.gleu(output, reference) == pytest.approx(sentence_gleu([ref], hyp), abs=1e-12)
        expected = single_meteor_score(ref, hyp, stemmer=_ExactOnly(), wordnet=_ExactOnly())
        assert text_metrics.meteor(output, reference) == pytest.approx(expected, abs=1e-12)


def test_rouge_matches_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rouge3", "rouge4", "rouge5", "rougeL"])
    for output, reference in _pairs(200):
        expected = scorer.score(reference, output)
        for n in range(1, 6):
            assert text_metrics.rouge_n(output, reference, n) == pytest.approx(expected[f"rouge{n}"].fmeasure)
        assert text_metrics.rouge_l(output, reference) == pytest.approx(expected["rougeL"].fmeasure)


def test_fuzzy_match_is_a_similarity():
    assert text_metrics.fuzzy_match("hello", "hello") == 1.0
    assert text_metrics.fuzzy_match("abc", "xyz") == 0.0
    assert 0.7 < text_metrics.fuzzy_match("color", "colour") < 1.0


def test_formula_computes_and_refuses_code():
    formula = parse_formula("0.5 * accuracy + 0.5 * max(format, 2 ^ -1) - -abs(penalty) / 2")
    assert formula.names() == {"accuracy", "format", "penalty"}
    assert formula.compute({"accuracy": 1, "format": 0, "penalty": -1}) == pytest.approx(1.25)
    for text, where in [
        ("__import__('os').system('x')", "character 12: .* is not allowed"),
        ("__import__(1)", "'__import__' is not a function"),
        ("a.b", "'.' is not allowed"),
        ("1 +", "ends too early"),
        ("min", "needs arguments"),
        ("abs(1, 2)", "takes one argument"),
        ("(" * 60 + "1" + ")" * 60, "nested deeper"),
        ("", "is empty"),
    ]:
        with pytest.raises(FormulaError, match=where):
            parse_formula(text)
    with pytest.raises(FormulaError, match="cannot be computed"):
        parse_formula("a / b").compute({"a": 1, "b": 0})
    with pytest.raises(FormulaError, match="too large"):
        parse_formula("9 ^ 9 ^ 9").compute({})


def test_templates_fill_item_and_sample():
    namespaces = {"item": {"answer": "42", "tags": ["x", "y"]}, "sample": sample_namespace('{"total": 42}')}
    assert render_template("{{item.answer}}={{ sample.output_json.total }}", namespaces) == "42=42"
    assert render_template("{{item.tags.1}} {{item.tags}}", namespaces) == 'y ["x", "y"]'
    with pytest.raises(MissingVariable, match="item has no 'missing'"):
        render_template("{{item.missing}}", namespaces)
    with pytest.raises(MissingVariable, match="sample has no 'output_json'"):
        render_template("{{sample.output_json.total}}", {"item": {}, "sample": sample_namespace("not json")})


@pytest.mark.parametrize(
    ("grader", "field", "message"),
    [
        ({"type": "nope", "name": "g"}, "grader.type", "must be one of"),
        (
            {"type": "string_check", "name": "g", "input": "x", "reference": "y", "operation": "is"},
            "grader.operation",
            "eq",
        ),
        ({"type": "string_check", "input": "x", "reference": "y", "operation": "eq"}, "grader.name", "non-empty"),
        (
            {"type": "string_check", "name": "g", "input": "{{ item['a'] }}", "reference": "y", "operation": "eq"},
            "grader.input",
            "is not a variable",
        ),
        (
            {"type": "text_similarity", "name": "g", "input": "x", "reference": "y", "evaluation_metric": "cosine"},
            "grader.evaluation_metric",
            "embedding model",
        ),
        ({"type": "python", "name": "g", "source": "x = 1"}, "grader.source", "grade(sample, item)"),
        (
            {
                "type": "score_model",
                "name": "g",
                "model": "m",
                "input": [{"role": "user", "content": "x"}],
                "range": [1, 0],
            },
            "grader.range",
            "two numbers",
        ),
        (
            {
                "type": "label_model",
                "name": "g",
                "model": "m",
                "input": [{"role": "user", "content": "x"}],
                "labels": ["good", "bad"],
                "passing_labels": ["great"],
            },
            "grader.passing_labels",
            "some of the labels",
        ),  # fmt: skip
        (
            {
                "type": "multi",
                "name": "m",
                "calculate_output": "a + b",
                "graders": {
                    "a": {"type": "string_check", "name": "a", "input": "x", "reference": "y", "operation": "eq"}
                },
            },
            "grader.calculate_output",
            "b, which no grader is named",
        ),  # fmt: skip
        (
            {
                "type": "multi",
                "name": "m",
                "calculate_output": "a",
                "graders": {
                    "a": {"type": "string_check", "name": "a", "input": "x", "reference": "y", "operation": "xx"}
                },
            },
            "grader.graders.a.operation",
            "must be one of",
        ),  # fmt: skip
    ],
)
def test_bad_graders_are_refused_where_they_are_wrong(grader, field, message):
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        parse_grader(grader)
    assert caught.value.field == field


def test_string_checks_and_multi_reward():
    grader = parse_grader(
        {
            "type": "multi",
            "name": "answer and format",
            "graders": {
                "exact": {
                    "type": "string_check",
                    "name": "exact",
                    "input": "{{sample.output_json.answer}}",
                    "reference": "{{item.answer}}",
                    "operation": "eq",
                },
                "mentions": {
                    "type": "string_check",
                    "name": "mentions",
                    "input": "{{sample.output_text}}",
                    "reference": "ANSWER",
                    "operation": "ilike",
                },
                "close": {
                    "type": "text_similarity",
                    "name": "close",
                    "input": "{{sample.output_text}}",
                    "reference": '{"answer": "{{item.answer}}"}',
                    "evaluation_metric": "fuzzy_match",
                },
            },
            "calculate_output": "0.5 * exact + 0.25 * mentions + 0.25 * close",
        }  # fmt: skip
    )
    assert isinstance(grader, MultiGrader)
    assert grader_json(grader)["graders"]["exact"]["operation"] == "eq"
    with Scorer(grader) as scorer:
        good = scorer.grade('{"answer": "42"}', {"answer": "42"})
        assert good.sub_rewards == {"exact": 1.0, "mentions": 1.0, "close": 1.0}
        assert good.reward == 1.0 and not good.failed
        wrong = scorer.grade('{"answer": "41"}', {"answer": "42"})
        assert wrong.sub_rewards["exact"] == 0.0 and 0.9 < wrong.sub_rewards["close"] < 1.0
        assert wrong.reward == pytest.approx(0.25 + 0.25 * wrong.sub_rewards["close"])
        not_json = scorer.grade("42", {"answer": "42"})
        assert not_json.errors["invalid_variable_error"] and not_json.sub_rewards["exact"] == 0.0
        assert "output_json" in not_json.details["invalid_variable_error"][0]


@pytest.mark.parametrize(
    ("operation", "output", "reference", "score"),
    [("eq", "Paris", "Paris", 1), ("eq", "paris", "Paris", 0), ("ne", "a", "b", 1), ("like", "in Paris.", "Paris", 1),
     ("like", "in paris.", "Paris", 0), ("ilike", "in PARIS.", "paris", 1)],
)  # fmt: skip
def test_string_check_operations(operation, output, reference, score):
    grader = parse_grader(
        {
            "type": "string_check",
            "name": "g",
            "input": "{{sample.output_text}}",
            "reference": reference,
            "operation": operation,
        }  # fmt: skip
    )
    assert Scorer(grader).grade(output, {}).reward == score


def test_model_graders_parse_the_judges_answer():
    asked = []

    def judge(model, messages, sampling):
        asked.append((model, messages, sampling))
        return '{"result": 7, "steps": []}'

    grader = parse_grader(
        {
            "type": "score_model",
            "name": "judge",
            "model": "ft:judge",
            "range": [0, 5],
            "input": [
                {"role": "developer", "content": "Grade 0-5."},
                {"role": "user", "content": "{{sample.output_text}}"},
            ],
            "sampling_params": {"temperature": 0.2},
        }  # fmt: skip
    )
    result = Scorer(grader, judge=judge).grade("an answer", {})
    assert result.reward == 5.0  # clipped to the range
    assert asked == [
        (
            "ft:judge",
            [{"role": "system", "content": "Grade 0-5."}, {"role": "user", "content": "an answer"}],
            {"temperature": 0.2},
        )  # fmt: skip
    ]
    no_judge = Scorer(grader).grade("x", {})
    assert no_judge.reward == 0.0 and no_judge.errors["model_grader_server_error"]
    assert judge_score("I would say 3.5 out of 5") == 3.5 and judge_score("no idea") is None
    assert judge_score("Step 1 is fine, step 2 too.\nScore: 4/5") == 4.0
    assert judge_label('{"result": "Good"}', ["good", "bad"]) == "good"
    assert judge_label("It is bad.", ["good", "bad"]) == "bad"
    assert judge_label("good or bad", ["good", "bad"]) is None


def test_a_local_judge_answers_a_batch_in_one_generate_and_the_scorer_reads_it():
    from worker.judges import LocalJudge

    class FakePool:
        calls: list = []

        def generate_many(self, base, requests, gen, should_stop=None):
            self.calls.append((base, requests, gen))
            should_stop()
            return [f"Score: {len(messages[-1]['content'])}" for messages, _adapter in requests]

    grader = parse_grader(
        {
            "type": "multi",
            "name": "both",
            "graders": {
                "length": {
                    "type": "score_model",
                    "name": "length",
                    "model": "ft:judge",
                    "range": [0, 3],
                    "input": [{"role": "user", "content": "{{sample.output_text}}"}],
                    "sampling_params": {"temperature": 0, "max_completions_tokens": 5000},
                },
                "rude": {
                    "type": "label_model",
                    "name": "rude",
                    "model": "gone",
                    "labels": ["yes", "no"],
                    "passing_labels": ["no"],
                    "input": [{"role": "user", "content": "{{item.missing}}"}],
                },
            },
            "calculate_output": "length",
        }  # fmt: skip
    )
    judge = LocalJudge({"ft:judge": {"base": "/models/base", "adapter": "/adapters/a", "max_tokens": 64}})
    judge.pool = pool = FakePool()
    scorer = Scorer(grader, judge=judge)
    answers = ["ab", "abcd", "ab"]
    requests = [r for text in answers for r in scorer.judge_requests(text, {})]
    assert len(requests) == 3  # the label grader's template misses a variable: it asks nothing
    looks = []
    judge.prefetch(requests, lambda: looks.append(1))
    assert len(pool.calls) == 1 and looks == [1]  # one batch, the two equal answers judged once
    base, rows, gen = pool.calls[0]
    assert base == "/models/base" and [adapter for _m, adapter in rows] == [("judge0", "/adapters/a")] * 2
    assert gen.max_new_tokens == 64 and gen.temperature == 0.0  # capped; greedy
    results = [scorer.grade(text, {}) for text in answers]
    assert [r.reward for r in results] == [2.0, 3.0, 2.0] and len(pool.calls) == 1  # read from the batch
    assert results[0].errors["invalid_variable_error"] and not results[0].errors["model_grader_server_error"]

    def stop():
        raise KeyboardInterrupt("cancel")

    with pytest.raises(KeyboardInterrupt):  # the stop check raises out of the batch (the Scorer never sees it)
        judge.prefetch(requests, stop)
    pool.generate_many = lambda *a, **k: (_ for _ in ()).throw(ValueError("no room"))
    judge.prefetch(requests, lambda: None)  # a judge that fails: its answers score 0 with the reason
    failed = [scorer.grade(text, {}) for text in answers + ["abcdef"]]  # the last one is not in the batch
    assert all(r.reward == 0.0 and any("the judge failed: no room" in p for p in r.problems()) for r in failed)
    unknown = Scorer(parse_grader({**grader_json(grader)["graders"]["length"], "model": "other"}), judge=judge)
    assert "was not given to this job" in unknown.grade("x", {}).problems()[0]
