"""The errors LoRA Studio raises on purpose, as one small tree (a leaf module: it imports nothing).

    StudioError                 a refusal with a message in plain words; `field` says what it is about
    ├── InputError              a value the user gave cannot be used (a missing dataset, a bad mapping, a URL)
    │   └── ConfigError         a training or sampling setting is not allowed (worker.config's dataclasses)
    ├── DatasetError            a data file cannot be used, with its problems by line (worker.data.problems)
    └── ProductError            the web side's refusals with their HTTP status (jobs.common.exceptions)
        ├── StateError          the object's state forbids it (409)
        └── Busy                the same work is still under way: try again in `retry_after` s (429)
    TrainingError               apart (a RuntimeError): training cannot go on; plain advice for the user

`status` is the HTTP status the APIs answer with; the engine only carries it.
"""

from __future__ import annotations

from typing import Any


class StudioError(Exception):
    """A refusal the user can act on: `message` in plain words, `field` naming what it is about."""

    status = 400
    field = "request"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        if field is not None:
            self.field = field

    def body(self) -> dict[str, Any]:
        """The error as the REST API answers it: {"field", "message"}."""
        return {"field": self.field, "message": self.message}


class InputError(StudioError, ValueError):
    """A value the user gave cannot be used; `field` names it (`str()` reads "field: message")."""

    def __init__(self, field: str, message: str):
        ValueError.__init__(self, f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str]]:
        return type(self), (self.field, self.message)


class ConfigError(InputError):
    """A training or sampling setting is not allowed; `field` names the setting."""


TRAINING_ERROR = "training_error"  # the default TrainingError code


class TrainingError(RuntimeError):
    """Training cannot go on; the message is plain advice for the user. Not a StudioError: it ends a run on
    a worker rather than refusing a request.

    `code` names the kind of failure for programs: `worker.memory_advice.OUT_OF_MEMORY`, or TRAINING_ERROR.
    """

    def __init__(self, message: str, code: str = TRAINING_ERROR):
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type[TrainingError], tuple[Any, str]]:
        return type(self), (self.args[0], self.code)
