"""Win rates and Wilson intervals against hand-computed values (no database)."""

import pytest

from jobs.arena.win_rate import PairRecord, wilson_interval, win_rate_table


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
