"""Grader templates: `{{ item.answer }}`, `{{ sample.output_text }}`, `{{ sample.output_json.a.b }}`.

Only a dotted path into the two namespaces is allowed (no expressions, no filters): a template is data, never
code. A path that is not there raises `MissingVariable`, which a grade reports as OpenAI's
`invalid_variable_error`.
"""

from __future__ import annotations

import json
import re
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
PATH = re.compile(r"(item|sample)(\.[A-Za-z0-9_\-]+)*")
MAX_OUTPUT_CHARS = 200_000


class MissingVariable(LookupError):
    """A template names a path the item or sample does not hold."""


def template_paths(text: str) -> list[str]:
    """The placeholders' paths in `text`; raises ValueError naming the first one that is not a path."""
    paths = []
    for match in PLACEHOLDER.finditer(text):
        path = match.group(1)
        if not PATH.fullmatch(path):
            raise ValueError(
                f"'{{{{{path}}}}}' is not a variable: use item.<field> or sample.output_text or sample.output_json.<field>"
            )
        paths.append(path)
    return paths


def render_template(text: str, namespaces: dict[str, Any]) -> str:
    """`text` with every placeholder replaced by its value (strings as they are, anything else as JSON)."""

    def value(match: re.Match[str]) -> str:
        path = match.group(1)
        found = lookup(path, namespaces)
        return found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)

    rendered = PLACEHOLDER.sub(value, text)
    return rendered[:MAX_OUTPUT_CHARS]


def lookup(path: str, namespaces: dict[str, Any]) -> Any:
    """The value at a dotted path (`item.a.b`, `sample.output_json.0`), or MissingVariable."""
    head, *rest = path.split(".")
    if head not in namespaces:
        raise MissingVariable(f"{path}: only item and sample can be used")
    current = namespaces[head]
    for index, part in enumerate(rest):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            where = ".".join([head, *rest[:index]])
            raise MissingVariable(f"{path}: {where} has no '{part}'")
    if current is None:
        raise MissingVariable(f"{path}: the value is empty (null)")
    return current


def sample_namespace(output_text: str) -> dict[str, Any]:
    """OpenAI's `sample`: the answer's text, and `output_json` when the text is a JSON object or array."""
    sample: dict[str, Any] = {"output_text": output_text}
    try:
        parsed = json.loads(output_text)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        parsed = None
    if isinstance(parsed, (dict, list)):
        sample["output_json"] = parsed
    return sample
