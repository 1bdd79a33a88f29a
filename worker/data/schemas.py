"""The record schemas (preference pairs, chat `messages`, ShareGPT `conversations`,
`prompt`/`completion`, Alpaca, plain `text`) plus mapped columns: detecting which one a file uses,
and checking and converting each record into an `Example`, every problem reported with its field."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from worker.data.examples import ROLES, Example, Record
from worker.data.jsonl import json_syntax
from worker.data.mapping import ColumnMapping
from worker.data.problems import type_name

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
SCHEMAS = ("preference", "prompts", "messages", "sharegpt", "prompt_completion", "alpaca", "text")
# A record matches a schema when it holds all of its keys; a preference record any of its own
# (so a pair missing `rejected` is reported as such, not as an unknown schema).
PREFERENCE_KEYS = ("chosen", "rejected", "preferred_output", "non_preferred_output")
SCHEMA_KEYS: dict[str, tuple[str, ...]] = {
    "preference": PREFERENCE_KEYS,
    "prompts": ("messages",),  # and the last message is a user turn (`matches_schema`)
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
}
# What a file of each schema holds, in plain words (the dataset pages' kind marks; problem messages).
SCHEMA_LABELS = {
    "preference": "Preference pairs",
    "prompts": "Prompts to reward",
    "messages": "Chat examples",
    "sharegpt": "Chat examples",
    "prompt_completion": "Prompts and answers",
    "alpaca": "Instructions and answers",
    "text": "Plain text",
}
SCHEMA_EXAMPLES = {
    "preference": '{"prompt": "...", "chosen": "...", "rejected": "..."}',
    "prompts": '{"messages": [{"role": "user", "content": "..."}], "answer": "..."}',
    "messages": '{"messages": [...]}',
    "sharegpt": '{"conversations": [...]}',
    "prompt_completion": '{"prompt": "...", "completion": "..."}',
    "alpaca": '{"instruction": "...", "input": "...", "output": "..."}',
    "text": '{"text": "..."}',
}
_SURROGATE = "holds an invalid character (a lone UTF-16 surrogate escape such as \\ud800)"

Report = Callable[..., None]  # (field, message) -> None, bound to one record's location
JsonObject = dict[str, Any]  # one record as parsed from JSON / a CSV or Parquet row


def _show(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_unicode(text: str) -> bool:
    """False when the string holds lone surrogates (from \\ud800-style JSON escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _missing(record: JsonObject, key: str, report: Report) -> None:
    keys = ", ".join(sorted(map(str, record))) or "none"
    report(key, f"is missing (keys found: {keys})")


def _check_string(record: JsonObject, key: str, report: Report, *, required: bool = True) -> str | None:
    """The string at record[key], or None after reporting why not. Optional keys may be absent, null or blank."""
    if key not in record:
        if required:
            _missing(record, key, report)
        return None
    value = record[key]
    if value is None and not required:
        return None
    if not isinstance(value, str):
        report(key, f"must be a string, got {type_name(value)}")
        return None
    if not _is_unicode(value):
        report(key, _SURROGATE)
        return None
    if not value.strip():
        if required:
            report(key, "is empty")
        return None
    return value


def _turn_list(
    turns: Any,
    report: Report,
    *,
    name: str,
    role_key: str,
    content_key: str,
    role_map: dict[str, str],
    expected: str,
    empty: str,
) -> list[dict[str, str]] | None:
    """A non-empty list of turns as {role, content} messages, or None after reporting every bad turn."""
    if not isinstance(turns, list):
        report(name, f"must be {expected}, got {type_name(turns)}")
        return None
    if not turns:
        report(name, empty)
        return None
    bad = ProblemCounter(report)
    messages = [
        _check_turn(msg, i, f"{name}[{i}]", bad, role_key, content_key, role_map) for i, msg in enumerate(turns)
    ]
    # a turn is None only after it was reported, so with no problems every turn is a message
    return None if bad.count else [m for m in messages if m is not None]


def _check_turns(
    turns: Any,
    report: Report,
    *,
    name: str,
    role_key: str,
    content_key: str,
    role_map: dict[str, str],
    assistant_hint: str = "",
) -> list[dict[str, str]] | None:
    """Validate a list of chat turns; return them as {role, content} messages, or None after reporting."""
    messages = _turn_list(
        turns,
        report,
        name=name,
        role_key=role_key,
        content_key=content_key,
        role_map=role_map,
        expected="a list of messages",
        empty="is empty; a conversation needs at least one user and one assistant turn",
    )
    if messages is None:
        return None
    if not any(m["role"] == "assistant" for m in messages):
        report(name, f"has no assistant turn{assistant_hint}, so there is nothing to learn")
        return None
    return messages


def _check_turn(
    msg: Any, i: int, where: str, bad: Report, role_key: str, content_key: str, role_map: dict[str, str]
) -> dict[str, str] | None:
    """Turn `i` as a {role, content} message; every problem with it goes to `bad`."""
    if not isinstance(msg, dict):
        bad(where, f"must be an object with {role_key} and {content_key}, got {type_name(msg)}")
        return None
    for key in (role_key, content_key):
        if key not in msg:
            bad(f"{where}.{key}", "is missing")
    raw_role = msg.get(role_key)
    role = role_map.get(raw_role) if isinstance(raw_role, str) else None
    if role_key in msg and role is None:
        bad(f"{where}.{role_key}", f"must be one of {', '.join(role_map)}, got {_show(raw_role)}")
    content = msg.get(content_key)
    if content_key in msg:
        if not isinstance(content, str):
            bad(f"{where}.{content_key}", f"must be a string, got {type_name(content)}")
        elif not _is_unicode(content):
            bad(f"{where}.{content_key}", _SURROGATE)
        elif not content.strip():
            bad(f"{where}.{content_key}", "is empty")
    if role == "system" and i != 0:
        bad(f"{where}.{role_key}", "a system message may only be the first message")
    return {"role": role, "content": content} if role is not None and isinstance(content, str) else None


def _cell_json(value: Any, key: str, report: Report) -> tuple[bool, Any]:
    """CSV cells are text: a messages/conversations cell must hold the list written as JSON."""
    if not isinstance(value, str):
        return True, value
    try:
        return True, json.loads(value)
    except (ValueError, RecursionError) as exc:
        detail = json_syntax(exc) if isinstance(exc, json.JSONDecodeError) else "too deeply nested"
        report(key, f"must be a list of messages written as JSON; the cell is not valid JSON ({detail})")
        return False, None


def _to_messages(system: str | None, user: str, assistant: str) -> list[dict[str, str]]:
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


class ProblemCounter:
    """Wraps a reporter and counts what went through it: a converter gives up after any problem."""

    def __init__(self, report: Report):
        self.report, self.count = report, 0

    def __call__(self, field_: str, message: str) -> None:
        self.count += 1
        self.report(field_, message)


def _turns_cell(record: JsonObject, key: str, report: Report, text_cells: bool) -> tuple[bool, Any]:
    return _cell_json(record[key], key, report) if text_cells else (True, record[key])


def _from_messages(
    record: JsonObject, report: ProblemCounter, text_cells: bool, mapping: ColumnMapping | None
) -> Example | None:
    if "messages" not in record:
        _missing(record, "messages", report)
        return None
    ok, value = _turns_cell(record, "messages", report, text_cells)
    msgs = (
        _check_turns(
            value, report, name="messages", role_key="role", content_key="content", role_map={r: r for r in ROLES}
        )
        if ok
        else None
    )
    return Example(0, messages=msgs) if msgs is not None else None


MAX_ITEM_FIELDS = 100


def _from_prompts(
    record: JsonObject, report: ProblemCounter, text_cells: bool, mapping: ColumnMapping | None
) -> Example | None:
    """A prompt for reinforcement fine-tuning: `messages` ending with a user turn; every other field of the row is
    kept as the item the graders read."""
    if "messages" not in record:
        _missing(record, "messages", report)
        return None
    ok, value = _turns_cell(record, "messages", report, text_cells)
    msgs = (
        _turn_list(
            value,
            report,
            name="messages",
            role_key="role",
            content_key="content",
            role_map={r: r for r in ROLES},
            expected="a list of messages",
            empty="is empty; a prompt needs at least one user message",
        )
        if ok
        else None
    )
    if msgs is None:
        return None
    if msgs[-1]["role"] != "user":
        report("messages", "must end with a user message: the model's answer to it is what the graders score")
        return None
    item = {key: cell for key, cell in record.items() if key != "messages"}
    if len(item) > MAX_ITEM_FIELDS:
        report("", f"has {len(item)} fields besides messages; at most {MAX_ITEM_FIELDS} are kept for the graders")
        return None
    return Example(0, messages=msgs, item=item)


def _from_sharegpt(
    record: JsonObject, report: ProblemCounter, text_cells: bool, mapping: ColumnMapping | None
) -> Example | None:
    if "conversations" not in record:
        _missing(record, "conversations", report)
        return None
    system = _check_string(record, "system", report, required=False)
    ok, value = _turns_cell(record, "conversations", report, text_cells)
    msgs = (
        _check_turns(
            value,
            report,
            name="conversations",
            role_key="from",
            content_key="value",
            role_map=SHAREGPT_ROLES,
            assistant_hint=" (from gpt or assistant)",
        )
        if ok
        else None
    )
    if msgs is None or report.count:
        return None
    if system and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}] + msgs
    return Example(0, messages=msgs)


def _from_prompt_completion(
    record: JsonObject, report: ProblemCounter, text_cells: bool, mapping: ColumnMapping | None
) -> Example | None:
    system = _check_string(record, "system", report, required=False)
    prompt = _check_string(record, "prompt", report)
    completion = _check_string(record, "completion", report)
    if report.count or prompt is None or completion is None:
        return None
    return Example(0, messages=_to_messages(system, prompt, completion))


def _from_alpaca(
    record: JsonObject, report: ProblemCounter, text_cells: bool, mapping: ColumnMapping | None
) -> Example | None:
    system = _check_string(record, "system", report, required=False)
    instruction = _check_string(record, "instruction", report)
    extra = _check_string(record, "input", report, required=False)
    output = _check_string(record, "output", report)
    if report.count or instruction is None or output is None:
        return None
    user = instruction + "\n\n" + extra if extra else instruction
    return Example(0, messages=_to_messages(system, user, output))


def _from_text(
    record: JsonObject, report: ProblemCounter, text_cells: bool, mapping: ColumnMapping | None
) -> Example | None:
    text = _check_string(record, "text", report)
    return Example(0, text=text) if text is not None else None


def _from_mapped(
    record: JsonObject, report: ProblemCounter, text_cells: bool, mapping: ColumnMapping | None
) -> Example | None:
    assert mapping is not None
    if mapping.text is not None:
        text = _check_string(record, mapping.text, report)
        return Example(0, text=text) if text is not None else None
    system = _check_string(record, mapping.system, report, required=False) if mapping.system else None
    assert mapping.prompt is not None  # ColumnMapping checks: prompt with response, or chosen and rejected
    prompt = _check_string(record, mapping.prompt, report)
    if mapping.is_preference:
        assert mapping.chosen is not None and mapping.rejected is not None
        chosen = _check_string(record, mapping.chosen, report)
        rejected = _check_string(record, mapping.rejected, report)
        if report.count or prompt is None or chosen is None or rejected is None:
            return None
        if chosen == rejected:
            report(
                mapping.rejected,
                f"is the same as {mapping.chosen}: chosen and rejected are identical, so there is nothing to prefer",
            )
            return None
        return Example(
            0,
            messages=_to_messages(system, prompt, chosen)[:-1],
            chosen=[{"role": "assistant", "content": chosen}],
            rejected=[{"role": "assistant", "content": rejected}],
        )
    assert mapping.response is not None
    response = _check_string(record, mapping.response, report)
    if report.count or prompt is None or response is None:
        return None
    return Example(0, messages=_to_messages(system, prompt, response))


# --- preference pairs: TRL's prompt / chosen / rejected and OpenAI's DPO format -------------------

_ASSISTANT_ONLY = {"assistant": "assistant"}


def _message_list(value: Any, name: str, report: Report, roles: dict[str, str]) -> list[dict[str, str]] | None:
    """A non-empty list of {role, content} messages with roles from `roles`, or None after reporting."""
    return _turn_list(
        value,
        report,
        name=name,
        role_key="role",
        content_key="content",
        role_map=roles,
        expected="a string or a list of messages",
        empty="is empty",
    )


def _pair_cell(record: JsonObject, key: str, text_cells: bool) -> Any:
    """A CSV cell holding a list of messages written as JSON is read as that list; other text stays text."""
    value = record[key]
    if text_cells and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return value
        return parsed if isinstance(parsed, list) else value
    return value


def _prompt_part(value: Any, name: str, report: Report) -> list[dict[str, str]] | None:
    """The prompt as messages: a string is one user turn; a list must end with a user turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if _check_string({name: value}, name, report) else None
    messages = _message_list(value, name, report, {r: r for r in ROLES})
    if messages is not None and messages[-1]["role"] != "user":
        report(name, f"must end with a user turn (the answers follow it), ends with {messages[-1]['role']}")
        return None
    return messages


def _answer_part(value: Any, name: str, report: Report) -> list[dict[str, str]] | None:
    """An answer as assistant messages: a string is one assistant turn, else a list of assistant messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}] if _check_string({name: value}, name, report) else None
    return _message_list(value, name, report, _ASSISTANT_ONLY)


def _implicit_prompt(chosen: Any, rejected: Any) -> tuple[list[Any], list[Any], list[Any]] | None:
    """TRL's implicit-prompt shape: chosen and rejected are whole conversations sharing the prompt."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        return None
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and not (isinstance(chosen[shared - 1], dict) and chosen[shared - 1].get("role") == "user"):
        shared -= 1
    if not shared:
        return None
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _openai_parts(record: JsonObject, report: ProblemCounter, text_cells: bool) -> tuple[Any, Any, Any] | None:
    """OpenAI's DPO line: (prompt, preferred, non-preferred) as found, or None after reporting."""
    source = record["input"]
    if text_cells and isinstance(source, str):
        ok, source = _cell_json(source, "input", report)
        if not ok:
            return None
    if not isinstance(source, dict) or "messages" not in source:
        report("input", f'must be an object like {{"messages": [...]}}, got {type_name(source)}')
        return None
    if isinstance(source["messages"], str):
        report("input.messages", "must be a list of messages, got str")
        return None
    answers = [_pair_cell(record, k, text_cells) for k in ("preferred_output", "non_preferred_output")]
    for name, value in zip(("preferred_output", "non_preferred_output"), answers):
        if isinstance(value, str):
            report(name, "must be a list of assistant messages, got str")
    return source["messages"], answers[0], answers[1]


def _trl_parts(record: JsonObject, report: ProblemCounter, text_cells: bool) -> tuple[str, Any, Any, Any] | None:
    """TRL's preference line: (prompt field name, prompt, chosen, rejected) as found, or None after reporting.
    Without a `prompt`, the prompt is `messages` (the normalised line) or the turns chosen and rejected share."""
    chosen, rejected = (_pair_cell(record, k, text_cells) for k in ("chosen", "rejected"))
    for key in ("prompt", "messages"):
        if key in record:
            return key, _pair_cell(record, key, text_cells), chosen, rejected
    split = _implicit_prompt(chosen, rejected)
    if split is None:
        _missing(record, "prompt", report)
        return None
    return ("prompt", *split)


def _from_preference(
    record: JsonObject, report: ProblemCounter, text_cells: bool, mapping: ColumnMapping | None
) -> Example | None:
    openai = any(k in record for k in ("input", "preferred_output", "non_preferred_output"))
    required = ("input", "preferred_output", "non_preferred_output") if openai else ("chosen", "rejected")
    for key in required:
        if key not in record:
            _missing(record, key, report)
    if report.count:
        return None
    system = None if openai else _check_string(record, "system", report, required=False)
    names: tuple[str, str, str]
    parts: tuple[Any, Any, Any] | None
    if openai:
        names, parts = (
            ("input.messages", "preferred_output", "non_preferred_output"),
            _openai_parts(record, report, text_cells),
        )
    else:
        found = _trl_parts(record, report, text_cells)
        if found is None:
            return None
        names, parts = (found[0], "chosen", "rejected"), found[1:]
    if parts is None:
        return None
    prompt = _prompt_part(parts[0], names[0], report)
    chosen = _answer_part(parts[1], names[1], report)
    rejected = _answer_part(parts[2], names[2], report)
    if report.count or prompt is None or chosen is None or rejected is None:
        return None
    if chosen == rejected:
        report(names[2], f"is the same as {names[1]}: chosen and rejected are identical, so there is nothing to prefer")
        return None
    if system and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}] + prompt
    return Example(0, messages=prompt, chosen=chosen, rejected=rejected)


Converter = Callable[[JsonObject, ProblemCounter, bool, "ColumnMapping | None"], "Example | None"]
# Each schema's reader: (record, counting reporter, CSV text cells?, mapping) -> Example or None after reporting.
CONVERTERS: dict[str, Converter] = {
    "preference": _from_preference,
    "prompts": _from_prompts,
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "prompt_completion": _from_prompt_completion,
    "alpaca": _from_alpaca,
    "text": _from_text,
    "mapped": _from_mapped,
}


def convert_record(
    schema: str, record: JsonObject, report: Report, *, text_cells: bool, mapping: ColumnMapping | None = None
) -> Example | None:
    """One record as an Example of `schema` (source filled in by the caller), or None after reporting."""
    converter = CONVERTERS.get(schema)
    if converter is None:
        raise ValueError(f"unknown schema {schema!r}")
    return converter(record, ProblemCounter(report), text_cells, mapping)


def detect_schema(records: list[Record]) -> str | None:
    """The schema most records match (ties go to the earlier schema in SCHEMAS, chats before prompts), or None."""
    counts = {s: 0 for s in SCHEMAS}
    for rec in records:
        if isinstance(rec.value, dict):
            for schema in SCHEMAS:
                if matches_schema(schema, rec.value):
                    counts[schema] += 1
                    break
    # A tie goes to the earlier schema, chat examples before prompts: a file of chats with one prompt among them
    # is read as chats (and that line reported), not the other way round.
    order = [s for s in SCHEMAS if s != "prompts"]
    order.insert(order.index("messages") + 1, "prompts")
    best = max(order, key=lambda s: (counts[s], -order.index(s)))
    return best if counts[best] else None


def format_reason(schema: str, first: Record, where: str, noun: str = "line") -> str:
    """Why every record is read as `schema`, for a record that does not match it: the first record that does,
    at `where` ("line 1"), and the keys it has ("line 1 has 'messages', so every line is read as chat examples")."""
    value = first.value if isinstance(first.value, dict) else {}
    keys = " and ".join(f"'{k}'" for k in SCHEMA_KEYS.get(schema, ()) if k in value)
    return f"{where} has {keys}, so every {noun} is read as {SCHEMA_LABELS[schema].lower()}"


def matches_schema(schema: str, record: JsonObject) -> bool:
    """Whether a record holds the keys that mark `schema` (as detect_schema counts them); a prompt to reward is a
    `messages` list whose last message is a user turn (OpenAI's reinforcement format), also as a CSV's JSON cell."""
    if schema == "prompts":
        turns = record.get("messages")
        if isinstance(turns, str):  # a CSV cell: the list written as JSON (the converter reads it the same way)
            try:
                turns = json.loads(turns)
            except (ValueError, RecursionError):
                return False
        return (
            isinstance(turns, list) and bool(turns) and isinstance(turns[-1], dict) and turns[-1].get("role") == "user"
        )
    keys = SCHEMA_KEYS[schema]
    return any(k in record for k in keys) if schema == "preference" else all(k in record for k in keys)
