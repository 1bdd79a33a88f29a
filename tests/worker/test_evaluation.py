"""The end-of-job evaluation answers for base and adapter in one batched generate, as one-by-one greedy would."""

import re

import pytest
import torch

from worker.config import TrainConfig, TrainSpec
from worker.data.tokenization import tokenize_examples
from worker.engine import evaluation_cost, train
from worker.evaluation import can_mix_adapters, generate_both
from worker.modeling import DeviceChoice, build_peft_model, load_base_model, load_tokenizer
from worker.reporting import MemoryReporter

PROMPTS = [
    [{"role": "user", "content": text}]
    for text in ("colour 2", "hello there, how are you today?", "x", "name three fruits please", "2+2")
]
NEW_TOKENS = 10


def perturbed_adapter(model_dir, dtype=torch.float32, **cfg):
    """A LoRA model whose adapter really changes the answers (B drawn at random instead of zeros)."""
    config = TrainConfig(dropout=0.0, target_preset="all_linear", **cfg)
    model, _ = build_peft_model(load_base_model(str(model_dir), DeviceChoice("cpu", dtype), config), config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval()


def one_by_one(model, tok, conversations):
    """The oracle: each prompt alone (no padding), greedy."""
    answers = []
    for conv in conversations:
        text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        answers.append(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return answers


@pytest.mark.parametrize("kind", ["lora", "dora", "bf16"])
def test_batched_answers_equal_one_by_one_greedy(tiny_llama, kind):
    """One mixed generate for fp32 LoRA; two batched ones where a mix is not exact (DoRA, a 16-bit base)."""
    model = perturbed_adapter(tiny_llama, torch.bfloat16 if kind == "bf16" else torch.float32, use_dora=kind == "dora")
    mixes = kind == "lora"
    tok = load_tokenizer(str(tiny_llama))
    calls = []
    real_generate = model.generate

    def counting_generate(**kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return real_generate(**kwargs)

    model.generate = counting_generate
    adapted, base = generate_both(model, tok, PROMPTS, NEW_TOKENS, "cpu")
    model.generate = real_generate
    assert can_mix_adapters(model) is mixes
    assert calls == ([2 * len(PROMPTS)] if mixes else [len(PROMPTS), len(PROMPTS)])
    with model.disable_adapter():
        base_alone = one_by_one(model, tok, PROMPTS)
    same = sum(a == b for a, b in zip(adapted + base, one_by_one(model, tok, PROMPTS) + base_alone, strict=True))
    # fp32 answers are the same token for token. A 16-bit base rounds its sums by the batch's shape on a CPU
    # without native bf16 (no AVX-512), and a random model's near-ties can then turn one greedy answer.
    assert same >= (2 * len(PROMPTS) if kind != "bf16" else 2 * len(PROMPTS) - 1), (adapted, base)
    assert adapted != base, "the adapter must change some answer, or the test proves nothing"


def test_the_job_log_says_what_the_evaluation_cost(tiny_llama, chat_file, tmp_path):
    reporter = MemoryReporter()
    spec = TrainSpec(
        str(tiny_llama),
        str(chat_file),
        str(tmp_path / "e"),
        TrainConfig(batch_size=4, epochs=1, target_preset="all_linear"),
        eval_dataset_path=str(chat_file),
        device="cpu",
    )
    train(spec, reporter)
    (message,) = [m for kind, m in reporter.events if kind == "evaluate" and m.startswith("evaluation took")]
    seconds, share = re.fullmatch(r"evaluation took ([\d.]+) s, (\d+)% of the job", message).groups()
    assert 0 < float(seconds) and 0 < int(share) <= 100
    assert evaluation_cost(12.04, 150) == "evaluation took 12.0 s, 8% of the job"


def old_answer_ids(model, tok, conversations, chunk=8, max_new_tokens=96):
    """The evaluation's answers as they were before bounds and stop tokens: batches of 8 in the prompts' own
    order, 96 new tokens, stopping at the tokenizer's eos only; (adapted, base) token ids of each answer."""
    from worker.chat_template import render_chat

    def run(convs):
        texts = [render_chat(tok, c, add_generation_prompt=True) for c in convs]
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                use_cache=True,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        return [row[enc["input_ids"].shape[1] :].tolist() for row in out]

    adapted, base = [], []
    for start in range(0, len(conversations), chunk):
        convs = conversations[start : start + chunk]
        adapted += run(convs)
        with model.disable_adapter():
            base += run(convs)
    return adapted, base


def answer_length(ids, tok):
    """New tokens of an answer up to and with its eos (what max_new_tokens bounds)."""
    return ids.index(tok.eos_token_id) + 1 if tok.eos_token_id in ids else len(ids)


def test_bounded_sorted_evaluation_keeps_every_answer_the_old_one_gave_within_the_bound(tiny_llama, tmp_path):
    """Answers as long as the bound allows are the old answers token for token; longer ones are their first
    `answer_tokens` tokens. Prompts of several lengths, sorted into batches of 3 (the old code: 8 in order)."""
    from tests.factories import memorisable_conversations, write_jsonl
    from worker.data.normalized import read_normalized_jsonl
    from worker.evaluation import evaluate_adapter, held_out_prompts
    from worker.loss import mean_token_loss

    train_file = write_jsonl(tmp_path / "train.jsonl", [{"messages": m} for m in memorisable_conversations()])
    others = [
        [{"role": "user", "content": text}, {"role": "assistant", "content": '{"answer": "red"}'}]
        for text in ("hello there, how are you today?", "name three fruits please", "x", "the quick brown fox")
    ]
    valid = write_jsonl(
        tmp_path / "valid.jsonl", [{"messages": m} for m in others[:2] + memorisable_conversations() + others[2:]]
    )
    spec = TrainSpec(
        str(tiny_llama),
        str(train_file),
        str(tmp_path / "out"),
        TrainConfig(
            batch_size=4,
            learning_rate=1e-2,
            warmup_ratio=0.0,
            target_preset="all_linear",
            rank=8,
            alpha=16,
            epochs=12,
            dropout=0.0,
            precision="fp32",
            final_eval=False,
        ),
        device="cpu",
    )
    model = train(spec, MemoryReporter()).model.eval()
    tok = load_tokenizer(str(tiny_llama))
    examples = read_normalized_jsonl(valid)
    prompts = held_out_prompts(examples, 20)
    old_adapted, old_base = old_answer_ids(model, tok, [c for c, _ in prompts])

    evaluation = evaluate_adapter(model, tok, examples, max_seq_length=256, device="cpu", generation_batch_size=3)
    bound = evaluation["answer_tokens"]
    assert bound < 96, "the references are short: the bound must cut the rambling answers"
    within = beyond = 0
    for row, old_a, old_b in zip(evaluation["rows"], old_adapted, old_base, strict=True):
        for side, old in (("adapter", old_a), ("base", old_b)):
            if answer_length(old, tok) <= bound:
                within += 1
                assert row[side] == tok.decode(old, skip_special_tokens=True), (side, row["prompt"])
            else:
                beyond += 1
                assert row[side] == tok.decode(old[:bound], skip_special_tokens=True), (side, row["prompt"])
    assert within and beyond, (within, beyond)  # both kinds of answer, or the test proves less than it says
    assert [r["prompt"] for r in evaluation["rows"]] == [c[-1]["content"] for c, _ in prompts], "rows keep their order"
    assert evaluation["rates"]["adapter"]["exact"] >= 0.5 > evaluation["rates"]["base"]["exact"]
    tokenized = tokenize_examples(tok, examples, 256)
    assert evaluation["loss"]["adapter"] == mean_token_loss(model, tokenized, 8, tok.pad_token_id, "cpu")


def test_answers_stop_at_the_templates_end_of_turn_token(tiny_llama, tmp_path):
    from worker.evaluation import end_of_turn_ids

    tok = load_tokenizer(str(tiny_llama))
    im_end, text_end = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert end_of_turn_ids(tok) == [im_end], "the eos already ends a ChatML turn"
    tok.eos_token = "<|endoftext|>"  # a base model's eos: its template still ends each turn with <|im_end|>
    assert end_of_turn_ids(tok) == [text_end, im_end]
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # nothing special after a turn
    assert end_of_turn_ids(tok) == [text_end]
    tok.chat_template = None
    assert end_of_turn_ids(tok) == [text_end]


def test_answer_bound_follows_the_longest_reference(tiny_llama):
    from worker.evaluation import answer_token_bound, length_sorted_batches

    tok = load_tokenizer(str(tiny_llama))
    refs = ['{"answer": "red"}', '{"name": "Ada", "city": "Paris", "date": "2024-05-01"}']
    longest = max(len(tok(r, add_special_tokens=False)["input_ids"]) for r in refs)
    assert answer_token_bound(tok, refs) == min(96, -(-5 * longest // 4) + 8)
    assert answer_token_bound(tok, refs, cap=20) == 20
    assert answer_token_bound(tok, ["x" * 400]) == 96
    assert length_sorted_batches(tok, PROMPTS, 2) == [[2, 4], [0, 3], [1]]


def test_a_stop_check_that_raises_ends_a_batched_generation_at_that_token(tiny_llama):
    """The engine's stop check runs at every new token, so a cancel does not wait for a whole batch."""
    from worker.evaluation import generate_batch

    model = perturbed_adapter(tiny_llama)
    tok = load_tokenizer(str(tiny_llama))
    calls = []

    class Cancelled(Exception):
        pass

    def stop_check():
        calls.append(1)
        if len(calls) == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        generate_batch(model, tok, PROMPTS, 50, "cpu", stop_check=stop_check)
    assert len(calls) == 3, "called once per new token until it raised"
    quiet = generate_batch(model, tok, PROMPTS, NEW_TOKENS, "cpu", stop_check=lambda: None)
    assert quiet == generate_batch(model, tok, PROMPTS, NEW_TOKENS, "cpu"), (
        "a check that does not raise changes nothing"
    )


def test_the_output_head_gets_a_contiguous_input_while_generating_and_the_answers_are_the_same(tiny_llama):
    """The first forward keeps the last position only, a strided slice that a bf16 CPU matmul runs slowly."""
    from worker.evaluation import generate_batch

    model = perturbed_adapter(tiny_llama)
    tok = load_tokenizer(str(tiny_llama))
    head = model.get_output_embeddings()
    plain = one_by_one(model, tok, PROMPTS[:1])
    seen = []
    # a forward hook sees the input as the pre-hooks left it; without the contiguity hook the first is strided
    spy = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    answers = generate_batch(model, tok, PROMPTS, NEW_TOKENS, "cpu")
    spy.remove()
    assert len(seen) == NEW_TOKENS and all(seen), seen
    assert not head._forward_pre_hooks, "the contiguity hook is removed after generating"
    assert answers[:1] == plain
