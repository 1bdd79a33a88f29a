"""Validation splits: a pure function of the examples, the percentage and the seed."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from worker.errors import InputError

T = TypeVar("T")


def held_out_positions(n: int, percent: float, seed: int) -> set[int]:
    """The positions (0-based) of the validation examples among `n`: `percent` of them, at least one, picked
    with `seed`; what `split_examples` holds out, for a caller that streams the examples."""
    if not 0 < percent < 100:
        raise InputError("validation_percent", f"must be between 0 and 100, got {percent!r}")
    if n < 2:
        raise InputError("validation_percent", "a dataset needs at least 2 examples to split off a validation set")
    n_eval = min(n - 1, max(1, round(n * percent / 100)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return set(order[:n_eval])


def split_examples(examples: Sequence[T], percent: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, validation): `percent` of the examples, at least one, picked with `seed`."""
    held = held_out_positions(len(examples), percent, seed)
    train = [e for i, e in enumerate(examples) if i not in held]
    valid = [e for i, e in enumerate(examples) if i in held]
    return train, valid
