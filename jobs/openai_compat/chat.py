"""OpenAI's chat completions (/v1/chat/completions): answered by the infer worker through the arena
services, streamed as chunks or returned whole."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from jobs.accounts.auth import InvalidApiKey, bearer_key, throttle_wait
from jobs.arena.live import chat_channel
from jobs.arena.services import ChatBusy, chat_check_bounds, chat_completion_create
from jobs.base_models.models import BaseModel
from jobs.common import events
from jobs.common.errors import OpenAIError, openai_error_body, openai_error_response
from jobs.openai_compat.base import known_fields
from jobs.openai_compat.errors import incorrect_key_error, method_not_allowed_error, missing_key_error
from jobs.openai_compat.fine_tuning import resolve_model
from worker.chat_template import render_chat
from worker.config import ConfigError, GenerationConfig
from worker.errors import InputError
from worker.modeling import cached_tokenizer

CHAT_FIELDS = {
    "model": "a string",
    "messages": "an array",
    "stream": "a boolean",
    "temperature": "a decimal",
    "top_p": "a decimal",
    "max_tokens": "an integer",
    "max_completion_tokens": "an integer",
    "seed": "an integer",
    "n": "an integer",
    "stream_options": "an object",
    "user": "a string",
    "store": "a boolean",
    "metadata": "an object",
}
ROLES = {"system", "developer", "user", "assistant"}


def _messages(value: Any) -> list[dict[str, str]]:
    if value is None:
        raise OpenAIError(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not value:
        raise OpenAIError(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages",
            code="empty_array",
        )
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise OpenAIError(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}", param=f"messages[{i}].role"
            )
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text is supported
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise OpenAIError(
                    f"messages[{i}].content: only text parts are supported", param=f"messages[{i}].content"
                )
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise OpenAIError(f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise OpenAIError("the last message must come from the user", param="messages")
    return out


def _generation(body: dict) -> GenerationConfig:
    values: dict[str, Any] = {}
    for name, target in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("max_tokens", "max_new_tokens"),
        ("max_completion_tokens", "max_new_tokens"),
    ):
        if body.get(name) is not None:
            values[target] = body[name]
    if body.get("n") not in (None, 1):
        raise OpenAIError("n must be 1", param="n")
    try:
        return GenerationConfig(**values)
    except ConfigError as exc:
        param = {"max_new_tokens": "max_tokens"}.get(exc.field, exc.field)
        raise OpenAIError(f"{param}: {exc.message}", param=param) from None


def _authenticate(request):
    """The user of a Bearer API key (this route takes no session), throttled per key; raises 401 / 429."""
    try:
        key = bearer_key(request.headers.get("Authorization", ""))
    except InvalidApiKey as exc:
        raise incorrect_key_error(exc.raw_key) from None
    if key is None:
        raise missing_key_error()
    wait = throttle_wait(key)
    if wait is not None:
        raise OpenAIError(
            f"Rate limit reached; retry in {wait:.0f}s.", code="rate_limit_exceeded", status=429, type_="requests"
        )
    return key.owner


def _prepare_chat(request, raw_body: bytes) -> dict[str, Any]:
    """Authenticate and validate a completion request; nothing is written yet."""
    user = _authenticate(request)
    try:
        body = json.loads(raw_body or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise OpenAIError("We could not parse the JSON body of your request.", code="invalid_json") from None
    body = known_fields(body, CHAT_FIELDS)
    stream = body.get("stream") or False
    base, job = resolve_model(user, body.get("model"))
    messages, generation = _messages(body.get("messages")), _generation(body)
    try:
        chat_check_bounds(owner=user, generation=generation, new_answers=1, messages=messages)
    except InputError as exc:
        param = {"max_new_tokens": "max_tokens"}.get(exc.field, exc.field)
        raise OpenAIError(f"{param}: {exc.message}", param=param) from None
    except ChatBusy as exc:
        raise OpenAIError(exc.message, code="rate_limit_exceeded", status=429, type_="requests") from None
    return {
        "user": user,
        "base": base,
        "job": job,
        "messages": messages,
        "generation": generation,
        "stream": stream,
        "model": body["model"],
        "include_usage": bool((body.get("stream_options") or {}).get("include_usage")),
    }


def _usage(base: BaseModel, messages: list[dict], text: str) -> dict[str, int]:
    """Token counts with the base model's tokenizer (no model is loaded); zeros if it cannot be read."""
    try:
        tok = cached_tokenizer(base.local_path)
        prompt = len(tok(render_chat(tok, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"])
        completion = len(tok(text, add_special_tokens=False)["input_ids"])
    except Exception:  # usage is informative; never fail a finished completion over it
        prompt = completion = 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _answer_events(prepared: dict, holder: dict):
    """Follow the answer's channel: yields ("token", text), then ("done", text) or ("error", message).

    The answer is created and queued only once subscribed, so no token is published unseen."""

    @sync_to_async
    def replay():
        answer = chat_completion_create(
            owner=prepared["user"],
            base=prepared["base"],
            job=prepared["job"],
            messages=prepared["messages"],
            generation=prepared["generation"],
            session_id=prepared["session_id"],
        )
        holder["answer"] = str(answer.id)
        return []

    def on_message(kind, data):
        if data.get("answer") != holder.get("answer"):
            return [], False
        if kind == "token":
            return [("token", data.get("text", ""))], False
        if kind == "done":
            return [("done", data.get("text", ""))], True
        if kind == "error":
            return [("error", data.get("error", "generation failed"))], True
        return [], False

    async for item in events.follow(chat_channel(prepared["session_id"]), replay, on_message):
        if isinstance(item, tuple):
            yield item


@csrf_exempt  # Bearer keys only: no cookie is read, so there is nothing to forge
async def chat_completions(request):
    """POST /v1/chat/completions: answered by the infer worker; streamed as chunks or returned whole."""
    if request.method != "POST":
        response = openai_error_response(method_not_allowed_error(request))
        response["Allow"] = "POST"
        return response
    body = request.body
    try:
        prepared = await sync_to_async(_prepare_chat)(request, body)
    except OpenAIError as err:
        return openai_error_response(err)
    # The session id is chosen here so the view can subscribe before the answer exists.
    prepared["session_id"] = uuid.uuid4()
    holder: dict[str, Any] = {}
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = prepared["model"]
    timeout = settings.CHAT_COMPLETION_TIMEOUT

    if prepared["stream"]:
        return _stream_response(prepared, holder, completion_id, created, model, timeout)

    text, failure = "", None
    try:
        async with asyncio.timeout(timeout):
            async with contextlib.aclosing(_answer_events(prepared, holder)) as stream:
                async for kind, value in stream:
                    if kind == "done":
                        text = value
                    elif kind == "error":
                        failure = value
    except TimeoutError:
        return openai_error_response(
            OpenAIError(f"The model did not answer within {timeout}s", code="timeout", status=504, type_="server_error")
        )
    if failure is not None:
        return openai_error_response(
            OpenAIError(f"Generation failed: {failure}", code="generation_failed", status=500, type_="server_error")
        )
    usage = await sync_to_async(_usage)(prepared["base"], prepared["messages"], text)
    return JsonResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    )


def _chunk(
    completion_id: str,
    created: int,
    model: str,
    delta: dict,
    finish_reason: str | None = None,
    usage: dict | None = None,
) -> str:
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def _stream_response(prepared, holder, completion_id, created, model, timeout):
    async def generate():
        yield _chunk(completion_id, created, model, {"role": "assistant", "content": ""})
        sent = ""
        try:
            async with asyncio.timeout(timeout):
                async with contextlib.aclosing(_answer_events(prepared, holder)) as stream:
                    async for kind, value in stream:
                        if kind == "token":
                            sent += value
                            yield _chunk(completion_id, created, model, {"content": value})
                        elif kind == "done":
                            # The final text is the record: send whatever the live pieces missed.
                            if value.startswith(sent) and len(value) > len(sent):
                                yield _chunk(completion_id, created, model, {"content": value[len(sent) :]})
                            yield _chunk(completion_id, created, model, {}, "stop")
                            if prepared["include_usage"]:
                                usage = await sync_to_async(_usage)(prepared["base"], prepared["messages"], value)
                                body = {
                                    "id": completion_id,
                                    "object": "chat.completion.chunk",
                                    "created": created,
                                    "model": model,
                                    "choices": [],
                                    "usage": usage,
                                }
                                yield f"data: {json.dumps(body)}\n\n"
                        elif kind == "error":
                            yield f"data: {json.dumps(openai_error_body(f'Generation failed: {value}', type_='server_error'))}\n\n"
        except TimeoutError:
            yield f"data: {json.dumps(openai_error_body(f'The model did not answer within {timeout}s', type_='server_error', code='timeout'))}\n\n"
        yield "data: [DONE]\n\n"

    return events.event_stream(generate())
