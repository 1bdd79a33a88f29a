"""The exceptions every app raises for a request it refuses; each HTTP layer turns them into a 4xx.
A leaf module (no Django REST framework import), so any module may raise them. They join the engine's
errors under worker.errors.StudioError, the one tree of the product's errors."""

from __future__ import annotations

from worker.errors import StudioError


class ProductError(StudioError):
    """A request the product refuses for a reason the user can fix: `field` names what it is about,
    `status` is the HTTP status the APIs answer with."""


class StateError(ProductError):
    """The object is in a state that forbids this (a finished job cannot be cancelled)."""

    status = 409
    field = "status"


class Busy(ProductError):
    """The same work is still under way (a test ping still being sent), or the server does as much of this
    work as it allows at once (parse children): a 429 whose Retry-After header says when to try again, in
    `retry_after` seconds."""

    status = 429
    field = "request"

    def __init__(self, message: str, *, retry_after: int, field: str | None = None):
        super().__init__(message, field=field)
        self.retry_after = max(1, int(retry_after))

    def body(self) -> dict:
        return {**super().body(), "retry_after": self.retry_after}
