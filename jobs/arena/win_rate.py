"""Win rates of model pairs from A/B votes, with Wilson score intervals. Pure Python, no Django.

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
    "Each row is from the first model's side: an adapter against the base, or this page's adapter against "
    "another. Its win rate = (wins + ½ × (ties + both bad)) / n, with a 95% Wilson score interval; ties and "
    "both-bad votes count as half a win for each side."
)


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
