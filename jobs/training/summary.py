"""What a finished job's page says first, in plain words: one sentence and two or three headline numbers
(base vs adapted for each score the evaluation has), and which settings apply to the job at all.
Pure functions of the stored evaluation, the job's figures and its config, so they are unit-tested alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.common.human_units import duration_words, percent_words
from worker.config import PREFERENCE_METHODS


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


def training_sentence(*, steps: int, seconds: float, first_loss: float | None, last_loss: float | None) -> str:
    """What happened, for a job without an evaluation: "Trained 120 steps in 2 min; the loss fell from 2.1 to 0.4"."""
    sentence = f"Trained {steps} step{'' if steps == 1 else 's'} in {duration_words(seconds)}"
    if first_loss is not None and last_loss is not None and steps > 1:
        change = "fell" if last_loss < first_loss else "rose" if last_loss > first_loss else "stayed"
        span = f"at {last_loss:.2g}" if change == "stayed" else f"from {first_loss:.2g} to {last_loss:.2g}"
        sentence += f"; the loss {change} {span}"
    return sentence + "."


def job_summary(
    *, evaluation: dict[str, Any] | None, steps: int, seconds: float, first_loss: float | None, last_loss: float | None
) -> JobSummary:
    """The finished job's sentence and headline numbers: from its evaluation where it has one, else how the
    training went."""
    if evaluation and evaluation.get("kind") == "preference":
        return preference_summary(evaluation)
    if evaluation and evaluation.get("rates"):
        return answers_summary(evaluation)
    return JobSummary(training_sentence(steps=steps, seconds=seconds, first_loss=first_loss, last_loss=last_loss))


def setting_applies(name: str, config: dict[str, Any], device: str | None) -> bool:
    """Whether a job setting is worth showing on the job's page: DPO/ORPO's beta only for those methods,
    CUDA-only settings not on a CPU job, sharding only with several devices, the custom layer list only with
    the custom preset, the early-stopping threshold only with early stopping, empty optional values not at all.
    `device`: what the job trained on ("cpu", "cuda"), None before it is known."""
    value = config.get(name)
    if name == "beta":
        return config.get("method", "supervised") in PREFERENCE_METHODS
    if name in ("liger", "qlora"):
        # Off, they say nothing unless a GPU could have used them; on a CPU they cannot be on.
        return bool(value) or device == "cuda"
    if name == "sharding":
        return int(config.get("devices") or 1) > 1
    if name == "target_modules":
        return config.get("target_preset") == "custom"
    if name == "early_stopping_threshold":
        return bool(config.get("early_stopping_patience"))
    if name in ("start_from", "modules_to_save", "max_steps"):
        return bool(value)  # empty or 0: off
    return True
