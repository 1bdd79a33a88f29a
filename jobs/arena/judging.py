"""A judge model comparing two models' answers, pair by pair: the built-in pairwise prompt, the strict reading of
its verdict, the two orders combined, the win rate with its interval, and how often the judge agreed with the
owner's own votes. Pure Python, no Django (jobs.arena.judgements runs it).

Each pair is judged twice, model A's answer shown first and then model B's. A judge with a position bias picks
the same screen position both times; a verdict counts as a win only when it names the same model in both orders,
and anything else (a flip, or a win against a tie) counts as a tie. An answer the judge gave that is not "A", "B"
or "tie" is a failure with its reason, never a tie: failures are left out of the counts and said.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from jobs.arena.win_rate import PairRecord, percent, wilson_interval

# Outcomes of one pair, from model A's side ("failed": no usable verdict in one order or both).
A, B, TIE, FAILED = "a", "b", "tie", "failed"
OUTCOMES = (A, B, TIE)
JUDGE_SYSTEM = (
    "You are an impartial judge. You compare two answers by AI assistants to the same user message and decide "
    "which one is better: more helpful, correct, relevant and clear. The order the answers are shown in and "
    "their length must not sway you. If neither is better, say tie."
)
JUDGE_USER = (
    "[User message]\n{prompt}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\n"
    "Which answer is better? Reply with exactly one word: A, B or tie."
)
# What may surround the verdict word: markdown emphasis, quotes, brackets ([[A]]), a full stop.
_WRAPPING = "*_`\"'[]()., \t"
_PREFIX = re.compile(r"^(verdict|answer|final answer|winner|better)\s*[:=-]\s*", re.IGNORECASE)


def judge_messages(prompt: str, first: str, second: str) -> list[dict[str, str]]:
    """The judge's conversation for one order: `first` is shown as Answer A, `second` as Answer B."""
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": JUDGE_USER.format(prompt=prompt, first=first, second=second)},
    ]


def _word(text: str) -> str | None:
    text = _PREFIX.sub("", text.strip().strip(_WRAPPING)).strip(_WRAPPING).lower()
    return {"a": "A", "b": "B", "tie": "tie"}.get(text)


def parse_verdict(text: str) -> tuple[str | None, str]:
    """The judge's answer read strictly: ("A" | "B" | "tie", "") when the whole answer, or its last line, is that
    word (markdown, quotes, brackets, "Verdict:" allowed around it); else (None, the reason in plain words)."""
    stripped = text.strip()
    if not stripped:
        return None, "the judge answered nothing"
    found = _word(stripped)
    if found is None:
        found = _word(stripped.splitlines()[-1])
    if found is not None:
        return found, ""
    shown = stripped if len(stripped) <= 80 else stripped[:77] + "..."
    return None, f"the judge answered {shown!r}, not A, B or tie"


@dataclass(frozen=True)
class PairVerdict:
    """One pair judged in both orders: `first` with model A's answer shown first, `swapped` with model B's first
    (each the word the judge said, None when it failed), and what they add up to from model A's side."""

    first: str | None
    swapped: str | None
    outcome: str  # a, b, tie or failed
    flipped: bool  # the two orders named different models (counted as a tie)
    same_position: bool  # ... because the judge picked the same screen position both times


def combine_orders(first: str | None, swapped: str | None) -> PairVerdict:
    """The verdicts of both orders as one: a win only when both name the same model, a tie otherwise."""
    if first is None or swapped is None:
        return PairVerdict(first, swapped, FAILED, False, False)
    as_a = {"A": A, "B": B, "tie": TIE}[first]
    as_swapped = {"A": B, "B": A, "tie": TIE}[swapped]  # model B's answer was shown as A
    if as_a == as_swapped:
        return PairVerdict(first, swapped, as_a, False, False)
    return PairVerdict(first, swapped, TIE, True, first == swapped and first != "tie")


@dataclass
class JudgeTally:
    """The pairs' outcomes counted from model A's side: its win rate over model B counts a tie as half a win."""

    wins: int = 0
    losses: int = 0
    ties: int = 0
    failed: int = 0
    flipped: int = 0  # ties that were a change of mind between the two orders
    same_position: int = 0  # ... where the judge picked the same position both times (its position bias)

    @classmethod
    def of(cls, verdicts: Iterable[PairVerdict]) -> JudgeTally:
        tally = cls()
        for verdict in verdicts:
            if verdict.outcome == A:
                tally.wins += 1
            elif verdict.outcome == B:
                tally.losses += 1
            elif verdict.outcome == TIE:
                tally.ties += 1
            else:
                tally.failed += 1
            tally.flipped += verdict.flipped
            tally.same_position += verdict.same_position
        return tally

    @property
    def record(self) -> PairRecord:
        return PairRecord(A, B, wins=self.wins, losses=self.losses, ties=self.ties)

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    def summary(self, model_a: str, model_b: str) -> dict:
        """The tally with the win rate of A over B and its 95% Wilson interval (None with nothing judged)."""
        record = self.record
        low, high = record.interval
        return {
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "failed": self.failed,
            "flipped": self.flipped,
            "same_position": self.same_position,
            "n": self.n,
            "win_rate": record.win_rate,
            "ci_low": low if self.n else None,
            "ci_high": high if self.n else None,
            "sentence": judge_sentence(self, model_a, model_b),
        }


def judge_sentence(tally: JudgeTally, model_a: str, model_b: str) -> str:
    """The judge's verdicts in plain words, position bias and failures included."""
    if not tally.n:
        said = f"The judge gave no usable verdict on {model_a} against {model_b}."
    else:
        rate = tally.record.win_rate
        assert rate is not None
        low, high = tally.record.interval
        said = (
            f"The judge preferred {model_a} on {tally.wins} of {tally.n} prompts and {model_b} on {tally.losses}, "
            f"with {tally.ties} ties (half a win each): a win rate of {percent(rate)} for {model_a}, "
            f"most likely between {percent(low)} and {percent(high)}."
        )
    if tally.flipped:
        said += (
            f" It changed its mind when the order was swapped on {tally.flipped} "
            f"(picking the same position both times on {tally.same_position}); those count as ties."
        )
    if tally.failed:
        said += f" {tally.failed} could not be judged."
    return said


@dataclass
class Agreement:
    """The judge's outcomes beside the owner's votes on the same prompts (both from model A's side)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)  # (judge, vote), each a, b or tie

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def agreed(self) -> int:
        return sum(judge == vote for judge, vote in self.pairs)

    def kappa(self) -> float | None:
        """Cohen's kappa over a, b and tie: agreement beyond chance; None where chance agreement is certain."""
        if not self.pairs:
            return None
        n = self.n
        judge, vote = Counter(j for j, _ in self.pairs), Counter(v for _, v in self.pairs)
        expected = sum(judge[k] * vote[k] for k in OUTCOMES) / (n * n)
        if expected >= 1.0:
            return None
        return (self.agreed / n - expected) / (1 - expected)

    def summary(self) -> dict:
        low, high = wilson_interval(self.agreed, self.n)
        return {
            "n": self.n,
            "agreed": self.agreed,
            "rate": self.agreed / self.n if self.n else None,
            "ci_low": low if self.n else None,
            "ci_high": high if self.n else None,
            "kappa": self.kappa(),
            "sentence": agreement_sentence(self),
        }


def vote_outcome(result: str, *, a_first: bool) -> str:
    """A vote's result (first, second, tie, both_bad; stored against the pair's canonical first model) from model
    A's side; both bad says neither is better, a tie."""
    if result in ("tie", "both_bad"):
        return TIE
    if result not in ("first", "second"):
        raise ValueError(f"result must be first, second, tie or both_bad, got {result!r}")
    return A if (result == "first") == a_first else B


def agreement_sentence(agreement: Agreement) -> str:
    if not agreement.n:
        return "You have no blind votes on these prompts, so the judge cannot be checked against you yet."
    said = f"The judge agreed with you on {agreement.agreed} of {agreement.n} prompts"
    low, high = wilson_interval(agreement.agreed, agreement.n)
    said += f" ({percent(agreement.agreed / agreement.n)}, most likely between {percent(low)} and {percent(high)})"
    kappa = agreement.kappa()
    if kappa is not None:
        said += f"; beyond chance, Cohen's kappa is {kappa:.2f} (1 is full agreement, 0 no better than chance)"
    return said + "."
