"""The exceptions every app raises for a request it refuses; each HTTP layer turns them into a 4xx.
A leaf module (no Django REST framework import), so any module may raise them."""
from __future__ import annotations

from typing import Any


class ProductError(Exception):
    """A request the product refuses for a reason the user can fix: `field` names what it is about,
    `status` is the HTTP status the APIs answer with."""

    status = 400
    field = "request"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        if field is not None:
            self.field = field

    def body(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message}


class StateError(ProductError):
    """The object is in a state that forbids this (a finished job cannot be cancelled)."""

    status = 409
    field = "status"
