"""Tokenization for training: a conversation through the tokenizer's own chat template with the loss
on assistant tokens only, a text trained on every token, or a preference pair as two conversations
(prompt + chosen, prompt + rejected) with the loss on the answer tokens only."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from worker.chat_template import render_chat
from worker.data.examples import Example

IGNORE_INDEX = -100  # the label of a position the loss skips (PyTorch's cross_entropy default)


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids and their labels, ready to batch."""

    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where the loss is masked

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)

    @property
    def length(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class TokenizedPair:
    """A preference pair: prompt + chosen and prompt + rejected, labels on each answer only."""

    chosen: TokenizedExample
    rejected: TokenizedExample

    @property
    def trained_tokens(self) -> int:
        return self.chosen.trained_tokens + self.rejected.trained_tokens

    @property
    def length(self) -> int:
        """The longer side, which sets the pair's padded width."""
        return max(self.chosen.length, self.rejected.length)


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """A prompt to answer through the chat template with the assistant's opening (the generation prompt), as
    reinforcement samples from it; untruncated."""
    return list(tokenizer(_render(tokenizer, messages, True), add_special_tokens=False)["input_ids"])


def tokenize_conversation(
    tokenizer: Any, messages: list[dict[str, str]], max_length: int, train_from: int = 0
) -> TokenizedExample:
    """Render through the chat template; labels cover the assistant turns only (those at index
    `train_from` or later: a preference pair trains its answer, not the assistant turns of its prompt).

    Spans are found on the rendered text (prefix renders of the conversation), then mapped to
    tokens with the tokenizer's offsets, which works for any template that renders a prefix of
    the conversation as a prefix of the text.
    """
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant" or i < train_from:
            continue
        start_text = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        end_text = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not full.startswith(start_text) or not full.startswith(end_text):
            raise ValueError("the chat template does not render conversation prefixes as text prefixes")
        spans.append((len(start_text), len(end_text)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if a == b:
            continue
        if any(s <= a < e for s, e in spans):
            labels[t] = ids[t]
    ids, labels = ids[:max_length], labels[:max_length]
    return TokenizedExample(ids, labels)


def tokenize_text(tokenizer: Any, text: str, max_length: int) -> TokenizedExample:
    """Continued pre-training: the text (with the tokenizer's own special tokens) plus EOS, all trained."""
    ids: list[int] = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    ids = ids[:max_length]
    return TokenizedExample(ids, list(ids))


def tokenize_example(tokenizer: Any, example: Example, max_length: int) -> TokenizedExample:
    """Messages: chat template, assistant tokens trained. Text: every token trained, EOS at the end."""
    if example.messages is not None:
        return tokenize_conversation(tokenizer, example.messages, max_length)
    if example.text is not None:
        return tokenize_text(tokenizer, example.text, max_length)
    raise ValueError(f"example from line {example.source} has neither messages nor text")


def tokenize_examples(tokenizer: Any, examples: Iterable[Example], max_length: int) -> list[TokenizedExample]:
    """Tokenize every example; drop ones left with no trained token after truncation."""
    out = []
    for example in examples:
        ex = tokenize_example(tokenizer, example, max_length)
        if ex.trained_tokens:
            out.append(ex)
    return out


def tokenize_pair(tokenizer: Any, example: Example, max_length: int) -> TokenizedPair:
    """Prompt + chosen and prompt + rejected through the chat template; labels on the answer tokens only."""
    if not example.is_preference or not example.messages:
        raise ValueError(f"example from line {example.source} is not a preference pair")
    start = len(example.messages)
    return TokenizedPair(
        tokenize_conversation(tokenizer, example.messages + (example.chosen or []), max_length, train_from=start),
        tokenize_conversation(tokenizer, example.messages + (example.rejected or []), max_length, train_from=start),
    )


def tokenize_pairs(tokenizer: Any, examples: Iterable[Example], max_length: int) -> list[TokenizedPair]:
    """Tokenize every preference pair; drop pairs where either answer lost all its tokens to truncation."""
    out = []
    for example in examples:
        pair = tokenize_pair(tokenizer, example, max_length)
        if pair.chosen.trained_tokens and pair.rejected.trained_tokens:
            out.append(pair)
    return out
