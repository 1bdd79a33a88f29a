"""What the dataset check page shows: token lengths against the max length, and examples split
into trained and masked pieces as the engine will see them."""
from __future__ import annotations

from dataclasses import dataclass, field

from worker.data.examples import Example
from worker.data.tokenization import IGNORE_INDEX, tokenize_example


@dataclass
class TokenReport:
    lengths: list[int]
    max_length: int
    truncated: int
    trained_tokens: int
    samples: list[list[tuple[str, bool]]] = field(default_factory=list)  # (text, trained?) pieces

    def histogram(self, bins: int = 30) -> dict:
        """Equal-width bins over 0..max(longest, max_length), for a bar chart."""
        top = max([self.max_length, *self.lengths]) if self.lengths else self.max_length
        width = max(1, -(-top // bins))
        counts = [0] * bins
        for n in self.lengths:
            counts[min(bins - 1, n // width)] += 1
        return {"edges": [i * width for i in range(bins + 1)], "counts": counts, "width": width}


def pieces(tokenizer, input_ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
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
    worker and stored, and every view and estimate reads it."""

    lengths: list[int]
    spans: list[list[int]]  # per example, trained positions as flat [start, end, start, end, ...]
    samples: list[list[tuple[str, bool]]] = field(default_factory=list)

    def report(self, max_length: int) -> TokenReport:
        trained = 0
        for flat in self.spans:
            for start, end in zip(flat[::2], flat[1::2]):
                trained += max(0, min(end, max_length) - start)
        truncated = sum(1 for n in self.lengths if n > max_length)
        return TokenReport(self.lengths, max_length, truncated, trained, self.samples)

    def to_json(self) -> dict:
        return {"lengths": self.lengths, "spans": self.spans, "samples": [[[t, b] for t, b in s] for s in self.samples]}

    @classmethod
    def from_json(cls, data: dict) -> "TokenProfile":
        return cls(lengths=[int(n) for n in data["lengths"]], spans=[[int(i) for i in s] for s in data["spans"]],
                   samples=[[(str(t), bool(b)) for t, b in s] for s in data.get("samples", [])])


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


def token_profile(tokenizer, examples: list[Example], samples: int = 3, limit: int = 5000,
                  progress=None) -> TokenProfile:
    """Tokenize up to `limit` examples once, untruncated; `progress(done, total)` every 100 examples."""
    chosen = examples[:limit]
    lengths, spans, shown = [], [], []
    for i, ex in enumerate(chosen):
        full = tokenize_example(tokenizer, ex, 10**9)
        lengths.append(len(full.input_ids))
        spans.append(trained_spans(full.labels))
        if i < samples:
            shown.append(pieces(tokenizer, full.input_ids, full.labels))
        if progress is not None and (i + 1) % 100 == 0:
            progress(i + 1, len(chosen))
    return TokenProfile(lengths, spans, shown)


def token_report(tokenizer, examples: list[Example], max_length: int, samples: int = 3,
                 limit: int = 5000) -> TokenReport:
    """Token lengths of up to `limit` examples (untruncated) and the first `samples` rendered."""
    return token_profile(tokenizer, examples, samples, limit).report(max_length)
