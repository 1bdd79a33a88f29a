"""The engine's own error: a leaf module (it imports nothing from the project), so the web side, the CLI and
the launcher catch it without importing the training recipe."""
from __future__ import annotations

TRAINING_ERROR = "training_error"  # the default TrainingError code


class TrainingError(RuntimeError):
    """Training cannot go on; the message is plain advice for the user.

    `code` names the kind of failure for programs: `worker.memory_advice.OUT_OF_MEMORY`, or TRAINING_ERROR.
    """

    def __init__(self, message: str, code: str = TRAINING_ERROR):
        super().__init__(message)
        self.code = code

    def __reduce__(self):
        return type(self), (self.args[0], self.code)
