"""Automatic evaluation at the end of a job: base vs adapted on the held-out split.

Loss and perplexity of both, then greedy answers to held-out prompts next to the reference, with
exact-match and (for JSON references) valid-JSON and same-keys rates. For DPO / ORPO jobs, the
preference accuracy of both on held-out pairs instead. The base side is the same loaded model with
the adapter off, so no second copy of the base is needed; the answers of both sides come from one
batched `generate` per chunk of prompts (PEFT's mixed-adapter batch, "__base__" rows skip the
adapter; two batched calls where that mix would not be exact), so it costs little next to training. Three
things keep it short (a base model that rambles would otherwise write every answer to the cap): answers stop
at the chat template's end-of-turn token as well as the tokenizer's eos; they are bounded by the references'
length (`answer_token_bound`: an answer far longer than the longest reference scores no exact match anyway);
and prompts of about the same length share a batch, so a batch pads little.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from worker.batching import Device
from worker.chat_template import ChatTemplateError, render_chat
from worker.config import TrainConfig
from worker.data.examples import Example
from worker.data.tokenization import tokenize_examples, tokenize_pairs
from worker.loss import mean_token_loss, pair_logps, preference_eval
from worker.result_words import evaluation_summary, percent_words

if TYPE_CHECKING:
    import torch


def _as_json(text: str) -> Any:
    try:
        return json.loads(text.strip())
    except (ValueError, TypeError):
        return None


def answer_scores(reference: str, answer: str) -> dict[str, bool | None]:
    """exact (whitespace-trimmed), and for a JSON-object reference: valid_json and same_keys."""
    scores: dict[str, bool | None] = {
        "exact": answer.strip() == reference.strip(),
        "valid_json": None,
        "same_keys": None,
    }
    ref = _as_json(reference)
    if isinstance(ref, dict):
        got = _as_json(answer)
        scores["valid_json"] = got is not None
        scores["same_keys"] = isinstance(got, dict) and set(got) == set(ref)
    return scores


def rates(rows: list[dict[str, Any]], side: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("exact", "valid_json", "same_keys"):
        values = [r[f"{side}_scores"][key] for r in rows if r[f"{side}_scores"][key] is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


ANSWER_TOKENS_CAP = 96  # the most tokens an answer may take, whatever its reference's length
# Answer room over the longest reference: a re-spaced or reordered JSON of the reference's keys fits. On the demo
# task (references of 25-29 tokens) 1.25x + 8 = 45 tokens scored as 1.5x + 16 = 60 did, 2 s sooner (bench/README.md).
ANSWER_TOKENS_FACTOR = 1.25
ANSWER_TOKENS_MARGIN = 8


def answer_token_bound(tokenizer: Any, references: list[str], cap: int = ANSWER_TOKENS_CAP) -> int:
    """The new tokens each held-out answer may take: 1.25x the longest reference answer plus 8, at most `cap`.
    An answer cut there was already far longer than every reference: no exact match either way (only a JSON
    answer that long, with the reference's keys, would lose its valid-JSON and same-keys marks)."""
    longest = max((len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references), default=cap)
    return max(1, min(cap, math.ceil(ANSWER_TOKENS_FACTOR * longest) + ANSWER_TOKENS_MARGIN))


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The token ids that end an assistant's answer: the tokenizer's eos, and the special token its chat template
    writes right after an assistant's words (ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`) where that differs
    (a base model whose eos is `<|endoftext|>` but whose template ends turns with `<|im_end|>`)."""
    eos = tokenizer.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    mark = "Answer"
    try:
        text = render_chat(tokenizer, [{"role": "user", "content": "Q"}, {"role": "assistant", "content": mark}])
    except ChatTemplateError:  # a template that will not render a plain exchange: the tokenizer's eos alone
        return ids
    after = text[text.rfind(mark) + len(mark) :] if mark in text else ""
    following = tokenizer(after, add_special_tokens=False)["input_ids"][:1] if after else []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items() if t.special}
    return ids + [i for i in following if i in special and i not in ids]


def held_out_prompts(examples: list[Example], limit: int) -> list[tuple[list[dict[str, str]], str]]:
    """(conversation up to the last assistant turn, that turn's reference answer)."""
    out: list[tuple[list[dict[str, str]], str]] = []
    for ex in examples:
        msgs = ex.messages or []
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is not None:
            out.append((msgs[:last], msgs[last]["content"]))
        if len(out) >= limit:
            break
    return out


# Held-out prompts per generate call (a mixed fp32 batch holds each twice): all 20 at once. On a CPU a decode
# step costs about the same for 8 rows as for 20, so one batch of 20 takes 2 calls' steps where 8 took 3's.
GENERATION_BATCH = 20

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


Conversation = list[dict[str, str]]


def generate_batch(
    model: Any,
    tokenizer: Any,
    conversations: list[Conversation],
    max_new_tokens: int,
    device: Device,
    adapter_names: list[str] | None = None,
    stop_ids: list[int] | None = None,
    stop_check: Callable[[], object] | None = None,
) -> list[str]:
    """Greedy answers for several conversations at once (left padding); `adapter_names` picks, row by row,
    the adapter each answer goes through (PEFT's mixed-adapter batch); a row ends at any of `stop_ids`
    (default: the tokenizer's eos); `stop_check()` is called at every new token and may raise to end it."""
    import torch

    texts = [render_chat(tokenizer, c, add_generation_prompt=True) for c in conversations]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(device)
    extra: dict[str, Any] = {"adapter_names": adapter_names} if adapter_names is not None else {}
    if stop_check is not None:
        extra["stopping_criteria"] = checking_stop(stop_check)
    with torch.inference_mode(), contiguous_head_input(model):
        # use_cache: training turned the key/value cache off in the config; without it every new token
        # would run the whole sequence again.
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop_ids or tokenizer.eos_token_id,
            **extra,
        )
    return [tokenizer.decode(row[enc["input_ids"].shape[1] :], skip_special_tokens=True) for row in out]


@contextlib.contextmanager
def contiguous_head_input(model: Any) -> Iterator[None]:
    """Feed the output head a contiguous input while generating. The first forward keeps only the last position's
    hidden state (`logits_to_keep=1`), a strided slice of the batch; a bf16 CPU matmul over that slice is
    slow: on the demo model 1.85 s for 20 prompts where the whole forward with every position's logits took
    0.45 s (bench/README.md). A copy of 20 rows costs nothing next to it."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda _module, args: tuple(a.contiguous() for a in args))
    try:
        yield
    finally:
        handle.remove()


def checking_stop(stop_check: Callable[[], object]) -> Any:
    """A stopping criterion for `generate` that stops no row but calls `stop_check()` at every new token, so
    a cancel (the engine's check raises) ends a long batched generation within its polling interval."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class CheckingStop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            stop_check()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([CheckingStop()])


def can_mix_adapters(model: Any) -> bool:
    """Whether one generate call can run rows through the adapter and rows through the base alone, with the
    answers each row would get alone: PEFT mixes adapters in a batch (not DoRA ones), and only at fp32 is
    the mix exact. With a 16-bit base, PEFT rounds a mixed batch's LoRA output to 16 bits before adding it
    where a plain forward adds at fp32 then rounds once, and greedy answers can part (seen on CUDA in bf16)."""
    import torch

    config = getattr(model, "peft_config", None)
    if not config or any(getattr(c, "use_dora", False) for c in config.values()):
        return False
    base_config = model.get_base_model().config
    dtype = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
    return dtype in (torch.float32, "float32")


def generate_both(
    model: Any,
    tokenizer: Any,
    conversations: list[Conversation],
    max_new_tokens: int,
    device: Device,
    stop_ids: list[int] | None = None,
    stop_check: Callable[[], object] | None = None,
) -> tuple[list[str], list[str]]:
    """(adapted, base) greedy answers: each prompt twice in ONE batched generate, once through the adapter and
    once with it off (as the chat worker's comparisons do); two batched calls where the mix would not be
    exact (DoRA, a 16-bit base)."""
    n = len(conversations)
    if can_mix_adapters(model):
        names = [model.active_adapter] * n + [BASE_ADAPTER] * n
        answers = generate_batch(
            model, tokenizer, list(conversations) * 2, max_new_tokens, device, names, stop_ids, stop_check
        )
        return answers[:n], answers[n:]
    adapted = generate_batch(model, tokenizer, conversations, max_new_tokens, device, None, stop_ids, stop_check)
    with model.disable_adapter():
        base = generate_batch(model, tokenizer, conversations, max_new_tokens, device, None, stop_ids, stop_check)
    return adapted, base


def length_sorted_batches(tokenizer: Any, conversations: list[Conversation], batch_size: int) -> list[list[int]]:
    """Indices of `conversations` in batches of about the same prompt length (shortest first), so a left-padded
    batch carries little padding; the rows go back into their own order afterwards."""
    lengths = [
        len(tokenizer(render_chat(tokenizer, c, add_generation_prompt=True), add_special_tokens=False)["input_ids"])
        for c in conversations
    ]
    order = sorted(range(len(conversations)), key=lambda i: lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def evaluate_adapter(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    *,
    max_seq_length: int,
    device: Device,
    max_prompts: int = 20,
    max_new_tokens: int = ANSWER_TOKENS_CAP,
    batch_size: int = 8,
    generation_batch_size: int = GENERATION_BATCH,
    stop_check: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Compare the adapted model with its own base (adapter disabled) on held-out examples.
    `stop_check()` is called before each generation batch and at each of its tokens (the engine's stop check,
    which may raise); answers take at most `answer_token_bound(...)` of `max_new_tokens`."""
    model.eval()
    tokenized = tokenize_examples(tokenizer, examples, max_seq_length)
    loss = {"adapter": mean_token_loss(model, tokenized, batch_size, tokenizer.pad_token_id, device)}
    with model.disable_adapter():
        loss["base"] = mean_token_loss(model, tokenized, batch_size, tokenizer.pad_token_id, device)
    prompts = held_out_prompts(examples, max_prompts)
    bound = answer_token_bound(tokenizer, [ref for _, ref in prompts], max_new_tokens)
    stop_ids = end_of_turn_ids(tokenizer)
    answers: dict[int, tuple[str, str]] = {}
    for batch in length_sorted_batches(tokenizer, [c for c, _ in prompts], generation_batch_size):
        if stop_check is not None:
            stop_check()
        convs = [prompts[i][0] for i in batch]
        adapted, base = generate_both(model, tokenizer, convs, bound, device, stop_ids, stop_check)
        answers.update(zip(batch, zip(adapted, base)))
    rows: list[dict[str, Any]] = []
    for i, (conv, ref) in enumerate(prompts):
        a, b = answers[i]
        rows.append(
            {
                "prompt": conv[-1]["content"] if conv else "",
                "reference": ref,
                "base": b,
                "adapter": a,
                "base_scores": answer_scores(ref, b),
                "adapter_scores": answer_scores(ref, a),
            }
        )
    return {
        "examples": len(tokenized),
        "loss": loss,
        "perplexity": {k: math.exp(min(v, 50)) for k, v in loss.items()},
        "rates": {"base": rates(rows, "base"), "adapter": rates(rows, "adapter")},
        "answer_tokens": bound,  # the most new tokens an answer could take
        "rows": rows,
    }


def evaluate_preferences(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    *,
    cfg: TrainConfig,
    device: Device,
    max_rows: int = 20,
    batch_size: int = 8,
    ref_table: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Base vs adapted on held-out preference pairs.

    `accuracy`: the share of pairs where the model finds the chosen answer more likely than the
    rejected one (mean log-probability per answer token, so answer length does not decide), the
    figure that means the same for the base and the adapted model. `loss`, `reward_margin` and
    `reward_accuracy` are the training objective's own (for DPO on the base, the base is its reference:
    margin 0); `ref_table`: the reference log-probs of the pairs when the reference is a previous adapter.
    """
    model.eval()
    pad_id = tokenizer.pad_token_id
    pairs = tokenize_pairs(tokenizer, examples, cfg.max_seq_length)
    kept = [e for e in examples if e.is_preference]

    def likelihoods() -> list[tuple[float, ...]]:
        return [tuple(row) for row in pair_logps(model, pairs, batch_size, pad_id, device, mean=True).tolist()]

    def objective_now() -> dict[str, float]:
        return preference_eval(model, pairs, batch_size, pad_id, device, cfg.method, cfg.beta, ref_table)

    scores: dict[str, list[tuple[float, ...]]] = {"adapter": likelihoods()}
    objective: dict[str, dict[str, float]] = {"adapter": objective_now()}
    with model.disable_adapter():
        scores["base"] = likelihoods()
        if cfg.method == "orpo" or ref_table is not None:
            objective["base"] = objective_now()
    if "base" not in objective:  # DPO on the base: the base is the reference, every log-ratio is 0 (and a
        # nested disable_adapter would switch the adapter back on when it ends)
        objective["base"] = {"loss": math.log(2), "reward_margin": 0.0, "reward_accuracy": 0.0}
    n = max(1, len(pairs))
    rows: list[dict[str, Any]] = []
    if len(pairs) == len(kept):  # rows line up with their examples (no pair was dropped by truncation)
        for ex, base, adapted in list(zip(kept, scores["base"], scores["adapter"]))[:max_rows]:
            assert ex.messages is not None and ex.chosen is not None  # a preference pair has both
            rows.append(
                {
                    "prompt": ex.messages[-1]["content"],
                    "chosen": ex.chosen[-1]["content"],
                    "rejected": (ex.rejected or [{"content": ""}])[-1]["content"],
                    "base_prefers_chosen": base[0] > base[1],
                    "adapter_prefers_chosen": adapted[0] > adapted[1],
                }
            )
    return {
        "kind": "preference",
        "method": cfg.method,
        "examples": len(pairs),
        "accuracy": {side: sum(c > r for c, r in got) / n for side, got in scores.items()},
        "margin": {side: sum(c - r for c, r in got) / n for side, got in scores.items()},
        "loss": {side: got["loss"] for side, got in objective.items()},
        "reward_margin": {side: got["reward_margin"] for side, got in objective.items()},
        "reward_accuracy": {side: got["reward_accuracy"] for side, got in objective.items()},
        "rows": rows,
    }


def summary_markdown(evaluation: dict[str, Any]) -> str:
    """The result in one plain sentence, then a short table, for the model card."""
    summary = evaluation_summary(evaluation)
    return (summary.sentence + "\n\n" if summary else "") + summary_table(evaluation)


def summary_table(evaluation: dict[str, Any]) -> str:
    """Base vs adapted as a markdown table."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else percent_words(v)

    if evaluation.get("kind") == "reward":
        reward = evaluation["reward"]
        return "\n".join(
            [
                "| | start | adapted |",
                "| --- | --- | --- |",
                f"| mean reward ({evaluation['prompts']} held-out prompts) | {reward['base']:.4f} | "
                f"{reward['adapter']:.4f} |",
            ]
        )
    if evaluation.get("kind") == "preference":
        acc, loss = evaluation["accuracy"], evaluation["loss"]
        return "\n".join(
            [
                "| | base | adapted |",
                "| --- | --- | --- |",
                f"| preference accuracy ({evaluation['examples']} held-out pairs) | {pct(acc['base'])} | "
                f"{pct(acc['adapter'])} |",
                f"| {evaluation['method'].upper()} validation loss | {loss['base']:.4f} | {loss['adapter']:.4f} |",
            ]
        )

    lines = [
        "| | base | adapted |",
        "| --- | --- | --- |",
        f"| validation loss | {evaluation['loss']['base']:.4f} | {evaluation['loss']['adapter']:.4f} |",
        f"| perplexity | {evaluation['perplexity']['base']:.2f} | {evaluation['perplexity']['adapter']:.2f} |",
    ]
    for key, label in (("exact", "exact match"), ("valid_json", "valid JSON"), ("same_keys", "same JSON keys")):
        b, a = evaluation["rates"]["base"][key], evaluation["rates"]["adapter"][key]
        if b is not None or a is not None:
            lines.append(f"| {label} ({len(evaluation['rows'])} held-out prompts) | {pct(b)} | {pct(a)} |")
    return "\n".join(lines)
