"""The judge's arithmetic on constructed verdicts (jobs.arena.judging): the strict reading of its answer, both
orders combined so a position bias turns into ties, the win rate with its Wilson interval, and the agreement with
the owner's votes with Cohen's kappa (held to scikit-learn's)."""

from __future__ import annotations

import pytest

from jobs.arena.judging import (
    FAILED,
    TIE,
    A,
    Agreement,
    B,
    JudgeTally,
    combine_orders,
    judge_messages,
    parse_verdict,
    vote_outcome,
)
from jobs.arena.win_rate import wilson_interval


@pytest.mark.parametrize(
    "said, word",
    [
        ("A", "A"),
        (" b \n", "B"),
        ("Tie.", "tie"),
        ("**A**", "A"),
        ("[[B]]", "B"),
        ('"tie"', "tie"),
        ("Verdict: A", "A"),
        ("Answer B is more precise.\nFinal answer: B", "B"),
    ],
)
def test_a_verdict_is_the_whole_answer_or_its_last_line(said, word):
    assert parse_verdict(said) == (word, "")


@pytest.mark.parametrize(
    "said, why",
    [
        ("", "the judge answered nothing"),
        ("I think A is better", "the judge answered 'I think A is better', not A, B or tie"),
        ("A or B", "not A, B or tie"),
        ("AB", "not A, B or tie"),
        ("Both are fine", "not A, B or tie"),  # not read as a tie: a failure with its reason
    ],
)
def test_anything_else_is_a_failure_with_its_reason_never_a_tie(said, why):
    verdict, problem = parse_verdict(said)
    assert verdict is None and why in problem


def test_the_judge_sees_each_answer_in_the_named_position():
    system, user = judge_messages("what is red?", "a colour", "a fruit")
    assert system["role"] == "system" and "order" in system["content"]
    assert user["content"].index("[Answer A]\na colour") < user["content"].index("[Answer B]\na fruit")
    assert user["content"].rstrip().endswith("Reply with exactly one word: A, B or tie.")


def test_a_win_counts_only_when_both_orders_name_the_same_model():
    # first: model A's answer shown as "A"; swapped: model B's answer shown as "A".
    assert combine_orders("A", "B").outcome == A  # A both times
    assert combine_orders("B", "A").outcome == B  # B both times
    assert combine_orders("tie", "tie").outcome == TIE and not combine_orders("tie", "tie").flipped
    biased = combine_orders("A", "A")  # the first position both times: a flip, a tie
    assert (biased.outcome, biased.flipped, biased.same_position) == (TIE, True, True)
    half = combine_orders("A", "tie")  # a win against a tie: not consistent, a tie, but no position picked twice
    assert (half.outcome, half.flipped, half.same_position) == (TIE, True, False)
    assert combine_orders(None, "A").outcome == FAILED and combine_orders("B", None).outcome == FAILED


def test_a_judge_that_always_says_a_gives_only_ties_and_half_the_wins():
    tally = JudgeTally.of(combine_orders("A", "A") for _ in range(8))
    summary = tally.summary("tuned", "base")
    assert (summary["wins"], summary["losses"], summary["ties"], summary["n"]) == (0, 0, 8, 8)
    assert summary["flipped"] == summary["same_position"] == 8
    assert summary["win_rate"] == 0.5
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx(wilson_interval(4, 8))
    assert (
        "changed its mind when the order was swapped on 8 (picking the same position both times on 8)"
        in (summary["sentence"])
    )


def test_the_win_rate_counts_ties_as_half_and_leaves_failures_out():
    verdicts = [combine_orders(*pair) for pair in [("A", "B")] * 5 + [("B", "A")] * 2 + [("tie", "tie"), (None, "A")]]
    summary = JudgeTally.of(verdicts).summary("tuned", "base")
    assert (summary["wins"], summary["losses"], summary["ties"], summary["failed"], summary["n"]) == (5, 2, 1, 1, 8)
    assert summary["win_rate"] == pytest.approx(5.5 / 8)
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx(wilson_interval(5.5, 8))
    assert summary["sentence"].startswith("The judge preferred tuned on 5 of 8 prompts and base on 2, with 1 ties")
    assert summary["sentence"].endswith("1 could not be judged.")
    empty = JudgeTally.of([combine_orders(None, None)]).summary("tuned", "base")
    assert empty["n"] == 0 and empty["win_rate"] is None and empty["ci_low"] is None


def test_votes_are_read_from_model_as_side():
    assert vote_outcome("first", a_first=True) == A and vote_outcome("first", a_first=False) == B
    assert vote_outcome("second", a_first=True) == B and vote_outcome("second", a_first=False) == A
    assert vote_outcome("tie", a_first=True) == vote_outcome("both_bad", a_first=False) == TIE
    with pytest.raises(ValueError):
        vote_outcome("left", a_first=True)


def test_agreement_with_votes_and_cohens_kappa_by_hand_and_as_scikit_learn_counts_it():
    judge = [A, A, B, TIE, A, B, A]
    votes = [A, B, B, TIE, A, A, A]
    agreement = Agreement(list(zip(judge, votes, strict=True)))
    summary = agreement.summary()
    assert (summary["n"], summary["agreed"]) == (7, 5) and summary["rate"] == pytest.approx(5 / 7)
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx(wilson_interval(5, 7))
    # judge: a 4, b 2, tie 1; votes: a 4, b 2, tie 1 -> chance agreement (16 + 4 + 1) / 49
    expected = (16 + 4 + 1) / 49
    assert summary["kappa"] == pytest.approx((5 / 7 - expected) / (1 - expected))
    metrics = pytest.importorskip("sklearn.metrics")
    assert summary["kappa"] == pytest.approx(metrics.cohen_kappa_score(judge, votes))
    assert summary["sentence"].startswith("The judge agreed with you on 5 of 7 prompts (71 %")
    assert Agreement([(A, A), (A, A)]).kappa() is None  # one category only: chance agreement is certain
    assert Agreement().summary()["rate"] is None
