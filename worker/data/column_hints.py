"""Hints for the column-mapping step of a file whose schema is unknown: `guess_mapping` pre-fills the
roles from the header names ("Customer Question" -> prompt, "Agent Answer" -> response), and
`column_samples` gives a few short values per column so the user can see what each one holds."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# Header words that name a role. A guess is only made when exactly one column names a role and that
# column names no other role: a wrong pre-fill is worse than an empty select.
ROLE_WORDS: dict[str, frozenset[str]] = {
    "prompt": frozenset({"prompt", "question", "input", "instruction", "user", "query", "human", "ask"}),
    "response": frozenset({"answer", "response", "output", "completion", "assistant", "reply", "target"}),
    "system": frozenset({"system", "context"}),
}
SAMPLE_CHARS = 60


def header_words(name: str) -> list[str]:
    """The lower-case words of a header: split on case changes, spaces, underscores, dashes, digits;
    a plural "s" is dropped ("Questions" -> "question")."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(name))
    words = re.findall(r"[a-z]+", spaced.lower())
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words]


def _roles_named(column: str) -> set[str]:
    words = set(header_words(column))
    roles = {role for role, vocabulary in ROLE_WORDS.items() if words & vocabulary}
    if "system" in words:  # "system prompt" / "system_message" is the system turn, not the user's
        roles.discard("prompt")
    return roles


def guess_mapping(columns: Iterable[str]) -> dict[str, str]:
    """{role: column} for the roles (prompt, response, system) the headers name unambiguously; a column
    is never guessed twice and a role with several candidate columns is left out."""
    candidates: dict[str, list[str]] = {role: [] for role in ROLE_WORDS}
    for column in columns:
        roles = _roles_named(column)
        if len(roles) == 1:  # "question_answer_id" names two roles: unsure, so none
            candidates[roles.pop()].append(column)
    guess = {}
    for role, found in candidates.items():
        if len(found) == 1:
            guess[role] = found[0]
        elif found:  # several: only a header that is exactly the role word wins ("input" over "user_input")
            exact = [c for c in found if len(header_words(c)) == 1]
            if len(exact) == 1:
                guess[role] = exact[0]
    return guess


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def column_samples(
    rows: Iterable[Any], columns: list[str], per_column: int = 3, max_chars: int = SAMPLE_CHARS
) -> dict[str, list[str]]:
    """Up to `per_column` non-empty values of each column from the first rows, each cut to `max_chars`
    (whitespace folded), for display beside the mapping selects. Rows that are not objects are skipped."""
    samples: dict[str, list[str]] = {c: [] for c in columns}
    for row in rows:
        if not isinstance(row, dict):
            continue
        for column in columns:
            value = row.get(column)
            if value not in (None, "") and len(samples[column]) < per_column:
                samples[column].append(_short(value, max_chars))
        if all(len(v) >= per_column for v in samples.values()):
            break
    return samples
