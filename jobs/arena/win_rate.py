"""Win rates of model pairs from A/B votes, with Wilson score intervals, and the same in plain words.
Pure Python, no Django.

A pair's win rate is that of its first model: (wins + half of ties and of both-bad) / n, where n
counts every vote on the pair. Ties and both-bad votes both say "neither is better", so each counts
as half a win for each side; this keeps n the number of votes cast.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

Z_95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal
RESULTS = ("first", "second", "tie", "both_bad")
# The compare page states each pair from the adapter's side (against another adapter: the page's job's side).
CAPTION = (
    "Each row counts your votes on one pair of models, from the side of the model named first. "
    "A tie or a “both bad” vote counts as half a win for each side."
)
# The statistics behind the "could be anywhere from … to …" range, for a tooltip: plain words come first.
RANGE_HINT = "The range is a 95% Wilson score interval of the win rate = (wins + ½ × (ties + both bad)) / votes."
# A range at least this wide is called out as "this few votes".
WIDE_RANGE = 0.2


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion successes / n (successes may be fractional)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class PairRecord:
    """The votes on one pair, from the first model's point of view."""

    first: Hashable
    second: Hashable
    wins: int = 0
    losses: int = 0
    ties: int = 0
    both_bad: int = 0

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties + self.both_bad

    @property
    def score(self) -> float:
        return self.wins + 0.5 * (self.ties + self.both_bad)

    @property
    def win_rate(self) -> float | None:
        return self.score / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.score, self.n)

    def flipped(self) -> PairRecord:
        """The same votes from the second model's side (Wilson intervals are symmetric, so its interval is
        1 - high .. 1 - low)."""
        return PairRecord(self.second, self.first, self.losses, self.wins, self.ties, self.both_bad)


def percent(x: float) -> str:
    """0.7 -> "70 %", rounded half up to a whole percent."""
    return f"{math.floor(100 * x + 0.5)} %"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def win_rate_sentence(record: PairRecord, model: str, opponent: str) -> str:
    """The record in plain words, from `model`'s side: "e2e won 7 of 10 votes (70 %) against the base. With
    this few votes the true rate could be anywhere from 40 % to 89 %." (The range is the Wilson interval.)"""
    if not record.n:
        return f"No votes yet on {model} against {opponent}."
    rate = record.win_rate
    assert rate is not None
    votes = _count(record.n, "vote", "votes")
    level = record.ties + record.both_bad
    if not level:
        said = f"{model} won {record.wins} of {votes} ({percent(rate)}) against {opponent}."
    else:
        said = f"{model} won {record.wins} of {votes} against {opponent}"
        parts = [_count(record.ties, "tie", "ties")] if record.ties else []
        parts += [_count(record.both_bad, "“both bad” vote", "“both bad” votes")] if record.both_bad else []
        counts = "count as half a win each" if level > 1 else "counts as half a win"
        said += f" and lost {record.losses}; {' and '.join(parts)} {counts}, so its win rate is {percent(rate)}."
    low, high = record.interval
    if high - low >= WIDE_RANGE:
        return f"{said} With this few votes the true rate could be anywhere from {percent(low)} to {percent(high)}."
    return f"{said} The true rate is most likely between {percent(low)} and {percent(high)}."


def win_rate_table(votes: Iterable[tuple[Hashable, Hashable, str]]) -> list[PairRecord]:
    """Aggregate (first, second, result) votes into one record per unordered pair, oriented as the
    pair was first seen; result is first, second, tie or both_bad. Most-voted pairs come first."""
    records: dict[frozenset, PairRecord] = {}
    for first, second, result in votes:
        if result not in RESULTS:
            raise ValueError(f"result must be one of {', '.join(RESULTS)}, got {result!r}")
        if first == second:
            raise ValueError(f"a model cannot be voted against itself ({first!r})")
        key = frozenset((first, second))
        record = records.setdefault(key, PairRecord(first, second))
        flipped = record.first != first
        if result == "tie":
            record.ties += 1
        elif result == "both_bad":
            record.both_bad += 1
        elif (result == "first") != flipped:
            record.wins += 1
        else:
            record.losses += 1
    return sorted(records.values(), key=lambda r: -r.n)
