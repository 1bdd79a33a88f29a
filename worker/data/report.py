"""What the dataset check page shows: token lengths against the max length, and examples split
into trained and masked pieces as the engine will see them. A preference pair is counted twice,
prompt + chosen and prompt + rejected, with the answer tokens trained on both sides. A prompt to reward
(reinforcement) has no answer: it is rendered with the generation prompt, as the engine samples from it, and
measured against the room its answers leave (max length - max answer tokens); a longer one keeps its end."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.data.examples import Example
from worker.data.tokenization import IGNORE_INDEX, TokenizedExample, prompt_ids, tokenize_conversation, tokenize_example

ITEM_CHARS = 60  # a prompt's extra field as the check page's table shows it


@dataclass
class TokenReport:
    lengths: list[int]
    max_length: int
    truncated: int
    trained_tokens: int
    samples: list[list[tuple[str, bool]]] = field(default_factory=list)  # (text, trained?) pieces
    # Preference pairs only (else None): prompt + rejected, parallel to `lengths` / `samples` (prompt + chosen).
    rejected_lengths: list[int] | None = None
    rejected_samples: list[list[tuple[str, bool]]] | None = None
    emptied: int = 0  # examples (pairs) with trained tokens of which this max length keeps none
    # Prompts to reward only (else None): each shown prompt's other fields (what the graders read), shortened.
    items: list[dict[str, str]] | None = None
    answer_tokens: int = 0  # prompts: the answer's room, taken from the max length

    @property
    def is_preference(self) -> bool:
        return self.rejected_lengths is not None

    @property
    def is_prompts(self) -> bool:
        return self.items is not None

    @property
    def room(self) -> int:
        """The tokens a sequence may have before it is cut: for prompts, what the answers leave."""
        return max(1, self.max_length - self.answer_tokens) if self.is_prompts else self.max_length

    def item_fields(self) -> list[str]:
        """The prompts' extra field names, in first-seen order (the table's headers)."""
        names: dict[str, None] = {}
        for item in self.items or []:
            names.update(dict.fromkeys(item))
        return list(names)

    def item_rows(self, limit: int = 10) -> list[tuple[int, list[str]]]:
        """The first prompts' fields in `item_fields` order ("" where a row lacks one), numbered from 1."""
        fields = self.item_fields()
        return [(i + 1, [item.get(f, "") for f in fields]) for i, item in enumerate((self.items or [])[:limit])]

    def histogram(self, bins: int = 30) -> dict[str, Any]:
        """Equal-width bins over 0..max(longest, max_length), for a bar chart; for pairs the same bins
        also count the rejected side (`rejected_counts`)."""
        both = self.lengths + (self.rejected_lengths or [])
        top = max([self.room, *both]) if both else self.room
        width = max(1, -(-top // bins))

        def count(lengths: list[int]) -> list[int]:
            counts = [0] * bins
            for n in lengths:
                counts[min(bins - 1, n // width)] += 1
            return counts

        out: dict[str, Any] = {
            "edges": [i * width for i in range(bins + 1)],
            "counts": count(self.lengths),
            "width": width,
        }
        if self.rejected_lengths is not None:
            out["rejected_counts"] = count(self.rejected_lengths)
        return out

    def sample_pairs(self) -> list[tuple[list[tuple[str, bool]], list[tuple[str, bool]]]]:
        """(chosen, rejected) renders side by side, for pairs."""
        return list(zip(self.samples, self.rejected_samples or []))


def truncation_warnings(report: TokenReport) -> list[str]:
    """What the max length cuts, in words: the examples longer than it, and those left with no trained token."""
    if not report.truncated:
        return []
    n = len(report.lengths)
    if report.is_prompts:
        return [
            f"{report.truncated} of {n} prompts are longer than the {report.room} tokens the answers leave "
            f"(max_seq_length {report.max_length} - max_answer_tokens {report.answer_tokens}): they keep their end."
        ]
    noun = "pairs" if report.is_preference else "examples"
    out = [f"{report.truncated} of {n} {noun} are longer than {report.max_length} tokens and will be cut."]
    if report.emptied:
        out.append(
            f"{report.emptied} of {n} {noun} would keep no trained token at this max length "
            f"(they teach nothing); raise max_seq_length."
        )
    return out


def pieces(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """Consecutive tokens with the same trained/masked state, decoded together."""
    out: list[tuple[str, bool]] = []
    run: list[int] = []
    state = None
    for tok, lab in zip(input_ids, labels):
        trained = lab != IGNORE_INDEX
        if state is not None and trained != state:
            out.append((tokenizer.decode(run), state))
            run = []
        run.append(tok)
        state = trained
    if run:
        out.append((tokenizer.decode(run), bool(state)))
    return out


@dataclass
class TokenProfile:
    """Every example's full token length and trained spans under one tokenizer, counted once: the
    report for any max length is arithmetic on it (no tokenizer needed), so it can be computed in a
    worker and stored, and every view and estimate reads it. For preference pairs `lengths` / `spans`
    / `samples` are prompt + chosen and the `rejected_*` lists, parallel to them, prompt + rejected
    (None for other datasets, and in profiles stored before pairs existed)."""

    lengths: list[int]
    spans: list[list[int]]  # per example, trained positions as flat [start, end, start, end, ...]
    samples: list[list[tuple[str, bool]]] = field(default_factory=list)
    rejected_lengths: list[int] | None = None
    rejected_spans: list[list[int]] | None = None
    rejected_samples: list[list[tuple[str, bool]]] | None = None
    items: list[dict[str, str]] | None = None  # prompts to reward: the shown prompts' other fields, shortened

    def report(self, max_length: int, answer_tokens: int = 0) -> TokenReport:
        """Trained tokens are the answer tokens kept at this max length, on both sides of a pair. Prompts have none
        (their answers are sampled): `answer_tokens` of the max length is kept for them, the rest is the prompt's."""
        if self.items is not None:
            room = max(1, max_length - answer_tokens)
            return TokenReport(
                self.lengths,
                max_length,
                sum(1 for n in self.lengths if n > room),
                0,
                self.samples,
                items=self.items,
                answer_tokens=answer_tokens,
            )
        trained = 0
        for flat in self.spans + (self.rejected_spans or []):
            for start, end in zip(flat[::2], flat[1::2]):
                trained += max(0, min(end, max_length) - start)
        truncated = sum(1 for n in self.lengths if n > max_length)
        if self.rejected_lengths is not None:  # a pair is truncated when either side is
            truncated = sum(1 for a, b in zip(self.lengths, self.rejected_lengths) if max(a, b) > max_length)
        sides = [self.spans] + ([self.rejected_spans] if self.rejected_spans is not None else [])
        emptied = sum(1 for flats in zip(*sides) if any(flat and flat[0] >= max_length for flat in flats))
        return TokenReport(
            self.lengths,
            max_length,
            truncated,
            trained,
            self.samples,
            rejected_lengths=self.rejected_lengths,
            rejected_samples=self.rejected_samples,
            emptied=emptied,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lengths": self.lengths, "spans": self.spans, "samples": _samples_json(self.samples)}
        if self.items is not None:
            out["items"] = self.items
        if self.rejected_lengths is not None:
            out.update(
                rejected_lengths=self.rejected_lengths,
                rejected_spans=self.rejected_spans or [],
                rejected_samples=_samples_json(self.rejected_samples or []),
            )
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenProfile:
        """Read `to_json`'s output; a profile without the rejected keys (older, or not pairs) has them None."""
        rejected = data.get("rejected_lengths")
        return cls(
            lengths=[int(n) for n in data["lengths"]],
            spans=_spans_of(data["spans"]),
            samples=_samples_of(data.get("samples", [])),
            rejected_lengths=None if rejected is None else [int(n) for n in rejected],
            rejected_spans=None if rejected is None else _spans_of(data.get("rejected_spans", [])),
            rejected_samples=None if rejected is None else _samples_of(data.get("rejected_samples", [])),
            items=None
            if data.get("items") is None
            else [{str(k): str(v) for k, v in i.items()} for i in data["items"]],
        )


def _samples_json(samples: list[list[tuple[str, bool]]]) -> list[list[list[str | bool]]]:
    return [[[t, b] for t, b in s] for s in samples]


def _samples_of(data: list[Any]) -> list[list[tuple[str, bool]]]:
    return [[(str(t), bool(b)) for t, b in s] for s in data]


def _spans_of(data: list[Any]) -> list[list[int]]:
    return [[int(i) for i in s] for s in data]


def trained_spans(labels: list[int]) -> list[int]:
    """The runs of trained positions in `labels`, flat as [start, end, start, end, ...]."""
    flat: list[int] = []
    for i, lab in enumerate(labels):
        if lab == IGNORE_INDEX:
            continue
        if flat and flat[-1] == i:
            flat[-1] = i + 1
        else:
            flat += [i, i + 1]
    return flat


def token_profile(
    tokenizer: Any,
    examples: list[Example],
    samples: int = 3,
    limit: int = 5000,
    progress: Callable[[int, int], object] | None = None,
) -> TokenProfile:
    """Tokenize up to `limit` examples once, untruncated; `progress(done, total)` every 100 examples.
    Pairs are tokenized as prompt + chosen and prompt + rejected, only the answers trained; prompts to reward
    with the generation prompt, nothing trained."""
    chosen = examples[:limit]
    if any(ex.is_prompt for ex in chosen):
        return _prompts_profile(tokenizer, chosen, samples, progress)
    pairs = any(ex.is_preference for ex in chosen)
    lengths: list[int] = []
    spans: list[list[int]] = []
    shown: list[list[tuple[str, bool]]] = []
    rejected_lengths: list[int] = []
    rejected_spans: list[list[int]] = []
    rejected_shown: list[list[tuple[str, bool]]] = []
    for i, ex in enumerate(chosen):
        if pairs:
            prompt = ex.messages or []
            full = tokenize_conversation(tokenizer, prompt + (ex.chosen or []), 10**9)
            other = tokenize_conversation(tokenizer, prompt + (ex.rejected or []), 10**9)
            rejected_lengths.append(len(other.input_ids))
            rejected_spans.append(_answer_spans(prompt, other))
            if i < samples:
                rejected_shown.append(pieces(tokenizer, other.input_ids, _answer_labels(prompt, other)))
        else:
            full = tokenize_example(tokenizer, ex, 10**9)
        labels = _answer_labels(ex.messages or [], full) if pairs else full.labels
        lengths.append(len(full.input_ids))
        spans.append(trained_spans(labels))
        if i < samples:
            shown.append(pieces(tokenizer, full.input_ids, labels))
        if progress is not None and (i + 1) % 100 == 0:
            progress(i + 1, len(chosen))
    if not pairs:
        return TokenProfile(lengths, spans, shown)
    return TokenProfile(lengths, spans, shown, rejected_lengths, rejected_spans, rejected_shown)


def _prompts_profile(
    tokenizer: Any, examples: list[Example], samples: int, progress: Callable[[int, int], object] | None
) -> TokenProfile:
    lengths: list[int] = []
    shown: list[list[tuple[str, bool]]] = []
    items: list[dict[str, str]] = []
    for i, ex in enumerate(examples):
        ids = prompt_ids(tokenizer, ex.messages or [])
        lengths.append(len(ids))
        if i < samples:
            shown.append([(tokenizer.decode(ids), False)])
            items.append({str(k): shorten(v) for k, v in (ex.item or {}).items()})
        if progress is not None and (i + 1) % 100 == 0:
            progress(i + 1, len(examples))
    return TokenProfile(lengths, [[] for _ in lengths], shown, items=items)


def shorten(value: Any, chars: int = ITEM_CHARS) -> str:
    """A field's value as one short line: strings as they are, other values as JSON, cut to `chars`."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _answer_labels(prompt: list[dict[str, str]], tokenized: TokenizedExample) -> list[int]:
    """Labels of the answer only: assistant turns inside the prompt (its history) are not trained in a pair."""
    history = sum(1 for m in prompt if m["role"] == "assistant")
    if not history:
        return tokenized.labels
    labels, runs = list(tokenized.labels), 0
    for i, lab in enumerate(labels):
        if lab == IGNORE_INDEX:
            continue
        if i == 0 or tokenized.labels[i - 1] == IGNORE_INDEX:
            runs += 1
        if runs <= history:
            labels[i] = IGNORE_INDEX
    return labels


def _answer_spans(prompt: list[dict[str, str]], tokenized: TokenizedExample) -> list[int]:
    return trained_spans(_answer_labels(prompt, tokenized))


def token_report(
    tokenizer: Any,
    examples: list[Example],
    max_length: int,
    samples: int = 3,
    limit: int = 5000,
    answer_tokens: int = 0,
) -> TokenReport:
    """Token lengths of up to `limit` examples (untruncated) and the first `samples` rendered."""
    return token_profile(tokenizer, examples, samples, limit).report(max_length, answer_tokens)
