"""Text similarity metrics for the `text_similarity` grader, each a score in [0, 1].

Definitions follow the references a test holds them to: BLEU, GLEU and METEOR as NLTK computes them for one
reference (BLEU-4 with uniform weights and NLTK's smoothing method 1; METEOR with exact word matches only),
ROUGE-N and ROUGE-L F1 as Google's `rouge-score` computes them (no stemming); `fuzzy_match` is the
similarity ratio of the two strings (difflib's, 2 * matching characters / total characters).
Inputs are cut to `MAX_CHARS` first so one call is bounded.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

MAX_CHARS = 20_000
WORD = re.compile(r"\w+|[^\w\s]")
ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: the tokens BLEU, GLEU and METEOR compare."""
    return WORD.findall(text[:MAX_CHARS].lower())


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's tokens: lower-case, anything but a-z and 0-9 separates."""
    return ROUGE_TOKEN.findall(text[:MAX_CHARS].lower())


def ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def fuzzy_match(output: str, reference: str) -> float:
    """How alike the two strings are, character by character (1.0 when equal)."""
    output, reference = output[:MAX_CHARS], reference[:MAX_CHARS]
    if not output and not reference:
        return 1.0
    return difflib.SequenceMatcher(None, output, reference, autojunk=False).ratio()


def bleu(output: str, reference: str, max_n: int = 4, epsilon: float = 0.1) -> float:
    """Sentence BLEU-4 (uniform weights, NLTK smoothing method 1: a zero count becomes `epsilon`)."""
    hypothesis, ref = words(output), words(reference)
    if not hypothesis:
        return 0.0
    log_total = 0.0
    for n in range(1, max_n + 1):
        hyp_grams, ref_grams = ngrams(hypothesis, n), ngrams(ref, n)
        matched = sum(min(count, ref_grams[gram]) for gram, count in hyp_grams.items())
        total = max(1, sum(hyp_grams.values()))
        if n == 1 and matched == 0:
            return 0.0
        log_total += math.log((matched or epsilon) / total) / max_n
    c, r = len(hypothesis), len(ref)
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(log_total)


def gleu(output: str, reference: str, min_n: int = 1, max_n: int = 4) -> float:
    """Sentence GLEU: matching 1- to 4-grams over the larger of the two sides' n-gram counts."""
    hypothesis, ref = words(output), words(reference)
    matched = hyp_total = ref_total = 0
    for n in range(min_n, max_n + 1):
        hyp_grams, ref_grams = ngrams(hypothesis, n), ngrams(ref, n)
        matched += sum((hyp_grams & ref_grams).values())
        hyp_total += sum(hyp_grams.values())
        ref_total += sum(ref_grams.values())
    denominator = max(hyp_total, ref_total)
    return matched / denominator if denominator else 0.0


def meteor(output: str, reference: str, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> float:
    """METEOR with exact word matches: a recall-weighted F-mean, less a penalty for matches in many pieces."""
    hypothesis, ref = words(output), words(reference)
    positions: dict[str, list[int]] = {}
    for j, word in enumerate(ref):
        positions.setdefault(word, []).append(j)
    matches = []
    for i in range(len(hypothesis) - 1, -1, -1):  # as NLTK: from the end, each to the latest unused position
        free = positions.get(hypothesis[i])
        if free:
            matches.append((i, free.pop()))
    if not matches:
        return 0.0
    matches.sort()
    chunks = 1 + sum(
        1 for a, b in zip(matches, matches[1:], strict=False) if not (b[0] == a[0] + 1 and b[1] == a[1] + 1)
    )
    precision, recall = len(matches) / len(hypothesis), len(matches) / len(ref)
    f_mean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    penalty = gamma * float((chunks / len(matches)) ** beta)
    return (1 - penalty) * f_mean


def rouge_n(output: str, reference: str, n: int) -> float:
    """ROUGE-N F1: shared n-grams over each side's n-grams, combined."""
    hyp_grams, ref_grams = ngrams(rouge_tokens(output), n), ngrams(rouge_tokens(reference), n)
    overlap = sum((hyp_grams & ref_grams).values())
    return _f1(overlap, sum(hyp_grams.values()), sum(ref_grams.values()))


def rouge_l(output: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of words over each side's length."""
    hypothesis, ref = rouge_tokens(output), rouge_tokens(reference)
    if not hypothesis or not ref:
        return 0.0
    previous = [0] * (len(ref) + 1)
    for word in hypothesis:
        current = [0]
        for j, other in enumerate(ref):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    return _f1(previous[-1], len(hypothesis), len(ref))


def _f1(overlap: int, hyp_total: int, ref_total: int) -> float:
    if not overlap:
        return 0.0
    precision, recall = overlap / hyp_total, overlap / ref_total
    return 2 * precision * recall / (precision + recall)


def _rouge(n: int) -> Callable[[str, str], float]:
    return lambda output, reference: rouge_n(output, reference, n)


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    **{f"rouge_{n}": _rouge(n) for n in range(1, 6)},
    "rouge_l": rouge_l,
}
# `cosine` needs an embedding model; `spec.parse_grader` refuses it with that reason.
