"""What a finished job's page says first, in plain words: one sentence and two or three headline numbers (from
its evaluation, worker.result_words; else how the training went), and which settings apply to the job at all.
Pure functions of the stored evaluation, the job's figures and its config, so they are unit-tested alone."""

from __future__ import annotations

from typing import Any

from jobs.common.human_units import duration_words
from worker.config import PREFERENCE_METHODS
from worker.result_words import JobSummary, evaluation_summary


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
    return evaluation_summary(evaluation) or JobSummary(
        training_sentence(steps=steps, seconds=seconds, first_loss=first_loss, last_loss=last_loss)
    )


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
