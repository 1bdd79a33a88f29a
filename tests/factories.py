"""Small builders the tests share: example conversations, JSONL files, API clients with a key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rest_framework.test import APIClient


def memorisable_conversations(n: int = 8) -> list[list[dict]]:
    return [
        [
            {"role": "user", "content": f"colour {i}"},
            {"role": "assistant", "content": f'{{"answer": "{["red", "green", "blue"][i % 3]}"}}'},
        ]
        for i in range(n)
    ]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def chat_jsonl() -> bytes:
    return "".join(json.dumps({"messages": m}) + "\n" for m in memorisable_conversations()).encode()


def bearer_client(owner) -> APIClient:
    """An API client that sends a fresh API key of `owner` (and enforces CSRF, which keys do not need)."""
    from rest_framework.test import APIClient

    from jobs.accounts.services import api_key_create

    _, raw = api_key_create(owner=owner, name="test")
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    client.raw_key = raw
    return client


def count_tokens() -> int:
    """Run the background worker's token counts that are waiting (unit tests have no worker); how many."""
    from jobs.datasets.models import TokenProfile
    from jobs.datasets.token_profiles import token_profile_compute

    pending = list(TokenProfile.objects.filter(status=TokenProfile.Status.PENDING).values_list("id", flat=True))
    for profile_id in pending:
        token_profile_compute(profile_id=profile_id)
    return len(pending)
