"""Rendering a model's chat template with a time, a loop and an output limit.

A chat template is code the model's author wrote (a Hub repository, a GGUF's metadata). Jinja's sandbox keeps it
from reaching Python's internals but not from running for ever: two nested `range(100000)` loops, or a string
doubled in a loop, hold a worker for hours. `render_chat` compiles the template as transformers does (the
immutable sandbox, `tojson`, `raise_exception`, `strftime_now`, `{% generation %}`), and counts as it runs:

* every loop step, call, attribute and item lookup checks the deadline and a loop budget;
* every value a call, a filter or an operator makes is measured, and a number argument past the output limit
  (`"x"|center(10**9)`, `"x" * 10**9`) is refused before it is made;
* the output is gathered piece by piece and refused past its limit.

A template past a limit raises `ChatTemplateError` naming it. Nothing here runs a thread or a signal, so it works
the same in the web process, the chat worker and training. `chat_template_refusal` is the check a new model
passes before it is registered.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.errors import InputError

FIELD = "chat_template"


@dataclass(frozen=True)
class TemplateLimits:
    """How much one rendering may take: seconds, loop steps (with calls and lookups), and output characters
    (`extra_chars` beyond twice the conversation's own characters)."""

    seconds: float = 2.0
    steps: int = 1_000_000
    extra_chars: int = 200_000


DEFAULT_LIMITS = TemplateLimits()


class ChatTemplateError(InputError):
    """The chat template cannot render this conversation: it broke a limit or stopped with an error."""

    def __init__(self, message: str):
        super().__init__(FIELD, message)


class ChatTemplateLimitError(ChatTemplateError):
    """The chat template ran past a limit (time, loop steps, output size): refused whatever the conversation."""


class _Budget:
    """What is left of one rendering's limits (one per rendering, found through a context variable)."""

    def __init__(self, limits: TemplateLimits, max_chars: int):
        self.limits, self.max_chars = limits, max_chars
        self.deadline = time.monotonic() + limits.seconds
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.limits.steps:
            raise ChatTemplateLimitError(
                f"the chat template runs more than {self.limits.steps:,} loop steps and calls for one conversation "
                "(a template must not loop that much); use a model with a simpler template"
            )
        if self.steps % 64 == 0 and time.monotonic() > self.deadline:
            raise ChatTemplateLimitError(
                f"the chat template takes more than {self.limits.seconds:g} s to render one conversation; "
                "use a model with a simpler template"
            )

    def check_size(self, value: Any) -> Any:
        if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > self.max_chars:
            raise self.too_long()
        return value

    def check_count(self, value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > self.max_chars:
            raise ChatTemplateLimitError(
                f"the chat template asks for a size of {value:,}, more than the {self.max_chars:,} characters "
                "its text may have; use a model with a simpler template"
            )

    def too_long(self) -> ChatTemplateLimitError:
        return ChatTemplateLimitError(
            f"the chat template makes more than {self.max_chars:,} characters for one conversation "
            f"(twice the conversation plus {self.limits.extra_chars:,}); use a model with a simpler template"
        )


_budget: ContextVar[_Budget | None] = ContextVar("chat_template_budget", default=None)


def _current() -> _Budget:
    budget = _budget.get()
    if budget is None:  # a compiled template used outside render_chat: the default limits still hold
        budget = _Budget(DEFAULT_LIMITS, DEFAULT_LIMITS.extra_chars)
        _budget.set(budget)
    return budget


def _bounded_filter(func: Any) -> Any:
    @functools.wraps(func)  # keeps jinja's pass_context marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _current()
        budget.step()
        for value in (*args, *kwargs.values()):
            budget.check_count(value)
        return budget.check_size(func(*args, **kwargs))

    return bounded


def _bounded_loop(values: Iterable[Any]) -> Iterator[Any]:
    budget = _current()
    for value in values:
        budget.step()
        yield value


@functools.lru_cache(maxsize=32)
def _compiled(source: str) -> Any:
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """transformers' `{% generation %}` block (it marks the assistant's text); here it renders its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "+", "%"])

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's)
            budget = _current()
            budget.step()
            for value in (*args, *kwargs.values()):
                budget.check_count(value)
                budget.check_size(value)
            return budget.check_size(super().call(__context, __obj, *args, **kwargs))

        def getattr(self, obj: Any, attribute: str) -> Any:
            budget = _current()
            budget.step()
            return budget.check_size(super().getattr(obj, attribute))

        def getitem(self, obj: Any, argument: Any) -> Any:
            budget = _current()
            budget.step()
            return budget.check_size(super().getitem(obj, argument))

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            budget = _current()
            budget.step()
            if operator == "*":
                budget.check_count(len(left) * right if isinstance(left, (str, list, tuple)) else 0)
                budget.check_count(len(right) * left if isinstance(right, (str, list, tuple)) else 0)
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise ChatTemplateLimitError(
                    "the chat template raises a number to a power over 64; it cannot be rendered"
                )
            return budget.check_size(super().call_binop(context, operator, left, right))

        def _parse(self, source: str, name: str | None, filename: str | None) -> Any:
            # Every `for` loop counts its steps: the loop's values pass through `_bounded_loop`.
            tree = super()._parse(source, name, filename)
            for loop in tree.find_all(nodes.For):
                loop.iter = nodes.Filter(loop.iter, "bounded_loop", [], [], None, None)
            return tree

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.filters = {name: _bounded_filter(func) for name, func in env.filters.items()}
    env.filters["bounded_loop"] = _bounded_loop
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env.from_string(source)


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_chars(v) for v in value)
    return 0


def render_template(
    source: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
    limits: TemplateLimits = DEFAULT_LIMITS,
    **variables: Any,
) -> str:
    """The template's text for `messages` within `limits`; ChatTemplateError names the limit or the error."""
    import jinja2

    budget = _Budget(limits, 2 * _chars(messages) + limits.extra_chars)
    token = _budget.set(budget)
    try:
        template = _compiled(source)
        parts: list[str] = []
        size = 0
        for part in template.generate(messages=messages, add_generation_prompt=add_generation_prompt, **variables):
            size += len(part)
            if size > budget.max_chars:
                raise budget.too_long()
            parts.append(part)
        return "".join(parts)
    except ChatTemplateError:
        raise
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the chat template is not valid Jinja (line {exc.lineno}): {exc.message}") from None
    except jinja2.TemplateError as exc:  # raise_exception(...) in the template, or the sandbox refusing
        raise ChatTemplateError(f"the chat template stopped with an error: {str(exc.message)[:300]}") from None
    except RecursionError:
        raise ChatTemplateError("the chat template calls itself too deeply; it cannot be rendered") from None
    except MemoryError:
        raise ChatTemplateLimitError(
            "the chat template needs more memory than there is; it cannot be rendered"
        ) from None
    except Exception as exc:  # a template's own bug (a None added to a string, a missing key)
        raise ChatTemplateError(f"the chat template fails on this conversation ({type(exc).__name__})") from None
    finally:
        _budget.reset(token)


def template_source(tokenizer: Any) -> str:
    """The tokenizer's chat template (the default one when it has several); ChatTemplateError when it has none."""
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):
        source = source.get("default")
    if not isinstance(source, str) or not source:
        raise ChatTemplateError("the model's tokenizer has no chat template")
    return source


def _special_tokens(tokenizer: Any) -> dict[str, Any]:
    found = getattr(tokenizer, "special_tokens_map", None) or {}
    return {name: value for name, value in found.items() if isinstance(value, (str, list))}


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> str:
    """`tokenizer.apply_chat_template(messages, tokenize=False, ...)` within `limits` (the same text)."""
    return render_template(
        template_source(tokenizer),
        messages,
        add_generation_prompt=add_generation_prompt,
        limits=limits,
        **_special_tokens(tokenizer),
    )


SAMPLE_CONVERSATIONS: list[list[dict[str, Any]]] = [
    [
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
        {"role": "user", "content": "And of Italy?"},
    ],
    [{"role": "user", "content": "What is the capital of France?"}],
]


def chat_template_refusal(tokenizer: Any, limits: TemplateLimits = DEFAULT_LIMITS) -> str | None:
    """Why a new model's chat template cannot be used (it broke a limit on a sample conversation, or fails on
    every sample), or None. A template may refuse a system turn; only one that fails on all samples is refused."""
    if not getattr(tokenizer, "chat_template", None):
        return None  # a model without a template is described as such; jobs refuse it by name
    failure = None
    for messages in SAMPLE_CONVERSATIONS:
        started = time.monotonic()
        try:
            render_chat(tokenizer, messages, add_generation_prompt=True, limits=limits)
        except ChatTemplateLimitError as exc:
            return exc.message
        except ChatTemplateError as exc:
            failure = exc.message
            continue
        if time.monotonic() - started > limits.seconds / 4:
            return (
                f"the chat template takes {time.monotonic() - started:.2f} s for a short sample conversation, "
                f"too slow for its limit of {limits.seconds:g} s on long ones"
            )
        return None
    return failure
