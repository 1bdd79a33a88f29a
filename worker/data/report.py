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


def token_report(tokenizer, examples: list[Example], max_length: int, samples: int = 3,
                 limit: int = 5000) -> TokenReport:
    """Token lengths of up to `limit` examples (untruncated) and the first `samples` rendered."""
    lengths, shown = [], []
    trained = 0
    for i, ex in enumerate(examples[:limit]):
        full = tokenize_example(tokenizer, ex, 10**9)
        lengths.append(len(full.input_ids))
        cut = tokenize_example(tokenizer, ex, max_length)
        trained += cut.trained_tokens
        if i < samples:
            shown.append(pieces(tokenizer, full.input_ids, full.labels))
    truncated = sum(1 for n in lengths if n > max_length)
    return TokenReport(lengths, max_length, truncated, trained, shown)
