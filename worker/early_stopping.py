"""The best evaluation so far and early stopping on the eval loss, saved in checkpoints so a
resumed job keeps counting where it stopped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class BestTracker:
    """The lowest eval loss so far and early stopping: patience counts evaluations, not steps."""

    patience: int = 0
    threshold: float = 0.0
    best_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0

    def update(self, step: int, eval_loss: float) -> bool:
        """Record an evaluation; True when it is a new best."""
        if self.best_loss is None or eval_loss < self.best_loss - self.threshold:
            self.best_loss, self.best_step, self.bad_evals = eval_loss, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "bad_evals": self.bad_evals}

    def restore(self, state: dict[str, Any]) -> None:
        self.best_loss = state.get("best_loss")
        self.best_step = state.get("best_step")
        self.bad_evals = int(state.get("bad_evals", 0))
