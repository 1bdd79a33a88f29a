"""The end-of-job evaluation answers for base and adapter in one batched generate, as one-by-one greedy would."""

import re

import pytest
import torch

from worker.config import TrainConfig, TrainSpec
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
