"""A model's chat template renders the same text as transformers does, within a time, a loop and an output limit:
a template that loops or grows without end is stopped in well under a second and refused at registration."""

import time

import pytest

from worker.chat_template import (
    ChatTemplateError,
    ChatTemplateLimitError,
    TemplateLimits,
    chat_template_refusal,
    render_chat,
    render_template,
)
from worker.demo_model import SMOLLM2_CHAT_TEMPLATE

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
]
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HUGE_OUTPUT = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"
DOUBLING = "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"


class Tokenizer:
    """Stands for a transformers tokenizer: its template and special tokens are all the renderer reads."""

    def __init__(self, chat_template):
        self.chat_template = chat_template
        self.special_tokens_map = {"eos_token": "</s>", "bos_token": "<s>"}


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_the_text_is_the_one_transformers_renders(tiny_llama, generation_prompt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    expected = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=generation_prompt)
    assert render_chat(tok, CHAT, add_generation_prompt=generation_prompt) == expected
    tok.chat_template = SMOLLM2_CHAT_TEMPLATE
    expected = tok.apply_chat_template(CHAT[1:], tokenize=False, add_generation_prompt=generation_prompt)
    assert render_chat(tok, CHAT[1:], add_generation_prompt=generation_prompt) == expected


@pytest.mark.parametrize(
    "template,limit",
    [
        (NESTED_LOOPS, "loop steps"),
        (HUGE_OUTPUT, "characters for one conversation"),
        (DOUBLING, "characters for one conversation"),
        ("{{ 'x'|center(1000000000) }}", "asks for a size of 1,000,000,000"),
        ("{{ 'x' * 1000000000 }}", "asks for a size of 1,000,000,000"),
        ("{{ 'x'.ljust(1000000000) }}", "asks for a size of 1,000,000,000"),
        ("{{ 9 ** 99999999 }}", "power over 64"),
    ],
)
def test_a_template_past_a_limit_stops_within_a_second_naming_it(template, limit):
    started = time.monotonic()
    with pytest.raises(ChatTemplateLimitError) as caught:
        render_template(template, CHAT, add_generation_prompt=True)
    assert time.monotonic() - started < 1
    assert limit in caught.value.message and caught.value.field == "chat_template"


def test_a_slow_template_stops_at_the_time_limit():
    slow = "{% for i in range(100000) %}{% if ('ab' * 50000).count('ab') %}{% endif %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(ChatTemplateLimitError, match="takes more than 0.3 s"):
        render_template(slow, CHAT, limits=TemplateLimits(seconds=0.3))
    assert time.monotonic() - started < 1


def test_a_template_error_is_a_plain_message():
    with pytest.raises(ChatTemplateError, match="stopped with an error: roles must alternate"):
        render_template("{{ raise_exception('roles must alternate') }}", CHAT)
    with pytest.raises(ChatTemplateError, match="not valid Jinja"):
        render_template("{% for %}", CHAT)
    with pytest.raises(ChatTemplateError, match="calls itself too deeply"):
        render_template("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", CHAT)


def test_registration_refuses_a_slow_template_with_the_reason_and_keeps_a_good_one():
    assert chat_template_refusal(Tokenizer(SMOLLM2_CHAT_TEMPLATE)) is None
    refusal = chat_template_refusal(Tokenizer(NESTED_LOOPS + SMOLLM2_CHAT_TEMPLATE))
    assert refusal is not None and "loop steps" in refusal
    refusal = chat_template_refusal(Tokenizer(HUGE_OUTPUT))
    assert refusal is not None and "characters" in refusal


def test_a_template_that_refuses_a_system_turn_is_not_refused_but_one_that_always_fails_is():
    no_system = "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}ok"
    assert chat_template_refusal(Tokenizer(no_system)) is None
    assert "stopped with an error: never" in chat_template_refusal(Tokenizer("{{ raise_exception('never') }}"))


def test_training_data_and_the_chat_worker_render_through_the_limits(tiny_llama):
    """Token counting and training (tokenize_conversation) and the chat worker (fit_conversation) stop a
    template that loops for ever, as the renderer does, instead of holding their process."""
    from transformers import AutoTokenizer

    from worker.config import GenerationConfig
    from worker.data.tokenization import tokenize_conversation
    from worker.inference import fit_conversation

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    assert tokenize_conversation(tok, CHAT + [{"role": "assistant", "content": "Red."}], 256).length > 0
    tok.chat_template = NESTED_LOOPS
    started = time.monotonic()
    with pytest.raises(ChatTemplateLimitError, match="loop steps"):
        tokenize_conversation(tok, CHAT + [{"role": "assistant", "content": "Red."}], 256)
    with pytest.raises(ChatTemplateLimitError, match="loop steps"):
        fit_conversation(tok, CHAT, GenerationConfig(max_new_tokens=8), 512)
    assert time.monotonic() - started < 3
