"""A job's evaluation in plain words: one sentence and the two or three numbers that matter, base vs adapted
(the job page leads with them, the model card too). Pure functions of worker.evaluation's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def percent_words(share: float | None) -> str:
    """A share 0..1 as a whole percentage ("88 %"), "–" when unknown."""
    return "–" if share is None else f"{100 * share:.0f} %"


@dataclass(frozen=True)
class Headline:
    """One number that matters: what it measures in plain words, the technical name as a hint, both sides."""

    label: str
    hint: str
    base: str
    adapted: str


@dataclass(frozen=True)
class JobSummary:
    sentence: str
    numbers: list[Headline] = field(default_factory=list)


# The answer scores of the supervised evaluation (worker.evaluation.rates), in the order they matter.
RATE_HEADLINES = (
    ("exact", "Answers exactly as in your data", "exact match"),
    ("valid_json", "Answers that are valid JSON", "valid JSON"),
    ("same_keys", "JSON with the expected keys", "same JSON keys"),
)


def _loss(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def preference_summary(evaluation: dict[str, Any]) -> JobSummary:
    acc, loss = evaluation["accuracy"], evaluation["loss"]
    sentence = (
        f"The adapted model prefers the chosen answer in {percent_words(acc['adapter'])} of "
        f"{evaluation['examples']} held-out pairs; the base model in {percent_words(acc['base'])}."
    )
    return JobSummary(
        sentence,
        [
            Headline(
                "Prefers the chosen answer", "preference accuracy", *map(percent_words, (acc["base"], acc["adapter"]))
            ),
            Headline(
                "Error on held-out pairs (lower is better)",
                f"{evaluation['method'].upper()} validation loss",
                _loss(loss["base"]),
                _loss(loss["adapter"]),
            ),
        ],
    )


def answers_summary(evaluation: dict[str, Any]) -> JobSummary:
    base, adapted = evaluation["rates"]["base"], evaluation["rates"]["adapter"]
    numbers = [
        Headline(label, hint, percent_words(base[key]), percent_words(adapted[key]))
        for key, label, hint in RATE_HEADLINES
        if base.get(key) is not None or adapted.get(key) is not None
    ]
    loss = evaluation["loss"]
    loss_line = Headline(
        "Error on held-out examples (lower is better)", "validation loss", _loss(loss["base"]), _loss(loss["adapter"])
    )
    if adapted.get("exact") is None:  # no held-out prompt was answered: the loss is all there is
        sentence = (
            f"On {evaluation['examples']} held-out examples the adapted model's error is {_loss(loss['adapter'])}, "
            f"the base model's {_loss(loss['base'])} (lower is better)."
        )
        return JobSummary(sentence, [loss_line])
    sentence = (
        f"The adapted model answers exactly as your data does {percent_words(adapted['exact'])} of the time; "
        f"the base model {percent_words(base['exact'])}"
    )
    if adapted.get("valid_json") is not None:
        sentence += f". {percent_words(adapted['valid_json'])} of its answers are valid JSON"
    if len(numbers) < 2:
        numbers.append(loss_line)
    return JobSummary(sentence + ".", numbers[:3])


def reward_summary(evaluation: dict[str, Any]) -> JobSummary:
    """Reinforcement: the grader's mean score of the start model's and the result's answers to held-out prompts."""
    reward = evaluation["reward"]
    sentence = (
        f"On {evaluation['prompts']} held-out prompts your grader scores the adapted model's answers "
        f"{reward['adapter']:.2f} on average; the start model's {reward['base']:.2f} (higher is better)."
    )
    numbers = [
        Headline(
            "Grader's score of the answers (higher is better)",
            "mean reward",
            *map(_score, (reward["base"], reward["adapter"])),
        )
    ]
    return JobSummary(sentence, numbers)


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def evaluation_summary(evaluation: dict[str, Any] | None) -> JobSummary | None:
    """The sentence and headline numbers of an evaluation (answers, preference pairs or rewards); None without one."""
    if evaluation and evaluation.get("kind") == "reward":
        return reward_summary(evaluation)
    if evaluation and evaluation.get("kind") == "preference":
        return preference_summary(evaluation)
    if evaluation and evaluation.get("rates"):
        return answers_summary(evaluation)
    return None
