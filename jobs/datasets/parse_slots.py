"""How many upload checks may run during requests at once: each parse child (up to DATASET_PARSE_MEMORY_MB for
DATASET_PARSE_SECONDS) takes a slot (`jobs.common.child_slots`), at most PARSE_CHILDREN_PER_USER per user and
PARSE_CHILDREN_TOTAL across every web process and thread; beyond, the request is refused with `Busy` (429 with
Retry-After). A slot a killed process held expires when the child's own time limit has passed."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from jobs.common.child_slots import SlotCaps, child_slot

TOTAL_KEY = "parse-slots:all"
RETRY_AFTER_SECONDS = 5  # a typical check ends within seconds; a client told to wait longer would wait for nothing
SLOT_MARGIN_SECONDS = 30  # beyond the child's own time limit: starting it and reading its answer


def user_key(owner) -> str:
    return f"parse-slots:user:{owner.pk}"


@contextmanager
def parse_slot(owner) -> Iterator[None]:
    """Hold one parse slot for `owner` while the block runs; Busy (429) when none is free."""
    caps = SlotCaps(
        user_key=user_key(owner),
        total_key=TOTAL_KEY,
        per_user=settings.PARSE_CHILDREN_PER_USER,
        total=settings.PARSE_CHILDREN_TOTAL,
        seconds=math.ceil(settings.DATASET_PARSE_SECONDS) + SLOT_MARGIN_SECONDS,
        user_busy=(
            f"you already have {settings.PARSE_CHILDREN_PER_USER} uploads being checked; "
            f"wait for one to finish and send this one again"
        ),
        all_busy="the server is checking as many uploads as it can at once; send this one again in a few seconds",
        retry_after=RETRY_AFTER_SECONDS,
    )
    with child_slot(caps):
        yield
