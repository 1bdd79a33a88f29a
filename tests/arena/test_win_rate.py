"""Win rates and Wilson intervals against hand-computed values, and the same in plain words (no database)."""

import pytest

from jobs.arena.win_rate import PairRecord, percent, wilson_interval, win_rate_sentence, win_rate_table


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Wilson score 95% intervals as printed in the usual tables (z = 1.96).
        (8, 10, 0.4902, 0.9433),
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (0, 5, 0.0, 0.4345),
    ],
)
def test_wilson_interval_matches_the_tables(successes, n, low, high):
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_by_hand_with_half_wins():
    # 3.5 of 7: p = 0.5, z²/n = 3.8415/7; centre stays 0.5, half = 1.96·sqrt(0.25/7 + 3.8415/196) / (1 + 3.8415/7)
    half = 1.959964 * (0.25 / 7 + 1.959964**2 / 196) ** 0.5 / (1 + 1.959964**2 / 7)
    assert wilson_interval(3.5, 7) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_table_counts_each_pair_from_its_first_model_and_halves_ties():
    votes = [
        ("base", "job1", "first"),
        ("base", "job1", "first"),
        ("base", "job1", "first"),
        ("base", "job1", "second"),
        ("base", "job1", "tie"),
        ("base", "job1", "both_bad"),
        ("job1", "base", "first"),  # the same pair the other way round: a loss for base
        ("job1", "job2", "second"),
    ]
    table = win_rate_table(votes)
    assert [(r.first, r.second) for r in table] == [("base", "job1"), ("job1", "job2")]
    pair = table[0]
    assert (pair.wins, pair.losses, pair.ties, pair.both_bad, pair.n) == (3, 2, 1, 1, 7)
    # (3 wins + ½·(1 tie + 1 both bad)) / 7 = 4/7; Wilson 95% of 4/7 by hand: 0.2505 .. 0.8418
    assert pair.win_rate == pytest.approx(4 / 7)
    assert pair.interval == pytest.approx((0.2505, 0.8418), abs=1e-4)
    other = table[1]
    assert (other.wins, other.losses, other.n, other.win_rate) == (0, 1, 1, 0.0)


def test_table_refuses_bad_votes():
    with pytest.raises(ValueError, match="result must be one of"):
        win_rate_table([("a", "b", "left")])
    with pytest.raises(ValueError, match="against itself"):
        win_rate_table([("a", "a", "tie")])
    assert win_rate_table([]) == [] and PairRecord("a", "b").win_rate is None


def test_a_win_rate_reads_as_plain_words_with_its_range():
    # 7 of 10: Wilson 95% 0.3968 .. 0.8922 (the tables), said as whole percents.
    record = PairRecord("job1", "base", wins=7, losses=3)
    assert win_rate_sentence(record, "e2e (ab12cd34)", "tiny-llama (base)") == (
        "e2e (ab12cd34) won 7 of 10 votes (70 %) against tiny-llama (base). "
        "With this few votes the true rate could be anywhere from 40 % to 89 %."
    )
    assert win_rate_sentence(PairRecord("a", "b", wins=1), "A", "B") == (
        "A won 1 of 1 vote (100 %) against B. With this few votes the true rate could be anywhere from 21 % to 100 %."
    )
    # Many votes narrow the range: 140 of 200, Wilson 0.6329 .. 0.7595.
    assert win_rate_sentence(PairRecord("a", "b", wins=140, losses=60), "A", "B") == (
        "A won 140 of 200 votes (70 %) against B. The true rate is most likely between 63 % and 76 %."
    )
    assert "Wilson" not in win_rate_sentence(record, "A", "B") and "CI" not in win_rate_sentence(record, "A", "B")


def test_ties_and_both_bad_are_said_as_half_wins():
    # (3 + ½·2) / 7 = 57 %; Wilson of 4/7: 0.2505 .. 0.8418.
    both = PairRecord("a", "b", wins=3, losses=2, ties=1, both_bad=1)
    assert win_rate_sentence(both, "A", "B") == (
        "A won 3 of 7 votes against B and lost 2; 1 tie and 1 “both bad” vote count as half a win each, so its "
        "win rate is 57 %. With this few votes the true rate could be anywhere from 25 % to 84 %."
    )
    one = win_rate_sentence(PairRecord("a", "b", wins=1, ties=1), "A", "B")
    assert one.startswith(
        "A won 1 of 2 votes against B and lost 0; 1 tie counts as half a win, so its win rate is 75 %."
    )
    assert win_rate_sentence(PairRecord("a", "b"), "A", "B") == "No votes yet on A against B."


def test_a_record_turned_round_is_the_other_sides_view():
    record = PairRecord("base", "job1", wins=2, losses=5, ties=1, both_bad=0)
    other = record.flipped()
    assert (other.first, other.second, other.wins, other.losses, other.ties, other.n) == ("job1", "base", 5, 2, 1, 8)
    assert other.win_rate == pytest.approx(1 - record.win_rate)
    low, high = record.interval
    assert other.interval == pytest.approx((1 - high, 1 - low), abs=1e-12)
    assert [percent(x) for x in (0, 0.005, 0.3968, 0.8922, 1)] == ["0 %", "1 %", "40 %", "89 %", "100 %"]
