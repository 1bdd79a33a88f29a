"""Public ids: the uuid primary keys as the OpenAI-style API and webhooks show them
(`file-<hex>`, `ftjob-<hex>`), and a check for uuid-looking query values."""

from __future__ import annotations

import uuid


def file_id(dataset_id) -> str:
    return f"file-{uuid.UUID(str(dataset_id)).hex}"


def ftjob_id(job_id) -> str:
    return f"ftjob-{uuid.UUID(str(job_id)).hex}"


def parse_public_id(value, prefix: str) -> uuid.UUID | None:
    """The uuid in `<prefix><hex>`, or None: an id of the wrong form names nothing (a 404, like an unknown one)."""
    if not isinstance(value, str) or not value.startswith(prefix):
        return None
    try:
        return uuid.UUID(hex=value[len(prefix) :])
    except ValueError:
        return None


def is_uuid(value) -> bool:
    """Whether a query-string value is a uuid (else it names no object)."""
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True
