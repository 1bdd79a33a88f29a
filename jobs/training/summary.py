"""What a finished job's page says first, in plain words: one sentence and two or three headline numbers (from
its evaluation, worker.result_words; else how the training went), and which settings apply to the job at all.
Pure functions of the stored evaluation, the job's figures and its config, so they are unit-tested alone."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jobs.common.human_units import duration_words
from worker.config import PREFERENCE_METHODS, REINFORCEMENT
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
    *,
    evaluation: dict[str, Any] | None,
    steps: int,
    seconds: float,
    first_loss: float | None = None,
    last_loss: float | None = None,
    first_reward: float | None = None,
    last_reward: float | None = None,
) -> JobSummary:
    """The finished job's sentence and headline numbers: from its evaluation where it has one, else how the
    training went (for reinforcement, how the grader's mean score of the tried answers moved)."""
    found = evaluation_summary(evaluation)
    if found is not None:
        return found
    sentence = training_sentence(steps=steps, seconds=seconds, first_loss=first_loss, last_loss=last_loss)
    if first_reward is not None and last_reward is not None and steps > 1:
        sentence = (
            f"{sentence[:-1]}; your grader's mean score of the tried answers went from {first_reward:.2f} "
            f"to {last_reward:.2f} (higher is better)."
        )
    return JobSummary(sentence)


# Settings whose empty value (or 0) means "off": shown on the job's page only when set.
OFF_WHEN_EMPTY = ("start_from", "modules_to_save", "max_steps")


def setting_applies(name: str, config: dict[str, Any], device: str | None) -> bool:
    """Whether a job setting is worth showing on the job's page: one that matters to the job
    (`setting_matters`) and, for the optional ones, is set at all.
    `device`: what the job trained on ("cpu", "cuda"), None before it is known."""
    if name in OFF_WHEN_EMPTY and not config.get(name):
        return False  # empty or 0: off
    return setting_matters(name, config, device)


REINFORCEMENT_SETTINGS = ("group_size", "sample_temperature", "max_answer_tokens")


def setting_matters(name: str, config: dict[str, Any], device: str | None) -> bool:
    """Whether a setting has any effect on the job: DPO/ORPO's beta only for those methods, CUDA-only settings
    not on a CPU job, sharding only with several devices, the custom layer list only with the custom preset, the
    early-stopping threshold only with early stopping. Compare runs shows the others as not applicable."""
    value = config.get(name)
    method = config.get("method", "supervised")
    if name == "beta":
        return method in PREFERENCE_METHODS or method == REINFORCEMENT
    if name in REINFORCEMENT_SETTINGS:
        return method == REINFORCEMENT
    if name in ("liger", "qlora"):
        # Off, they say nothing unless a GPU could have used them; on a CPU they cannot be on.
        return bool(value) or device == "cuda"
    if name == "sharding":
        return int(config.get("devices") or 1) > 1
    if name == "target_modules":
        return config.get("target_preset") == "custom"
    if name == "early_stopping_threshold":
        return bool(config.get("early_stopping_patience"))
    return True


def kept_eval_loss(
    *, evaluation: dict[str, Any] | None, eval_points: Iterable[tuple[float | None, bool]], keep_best: bool
) -> float | None:
    """The eval loss of the adapter a job keeps, the one figure its page and Compare runs show for it: the
    end-of-job evaluation's (measured on that adapter) where there is one; else, from the logged (eval loss,
    marked best) points in step order, the lowest marked best with "keep best" on (that step's adapter is
    kept), or the last one."""
    measured = ((evaluation or {}).get("loss") or {}).get("adapter")
    if measured is not None:
        return float(measured)
    losses = [(loss, best) for loss, best in eval_points if loss is not None]
    kept = [loss for loss, best in losses if best] if keep_best else []
    if kept:
        return min(kept)
    return losses[-1][0] if losses else None
