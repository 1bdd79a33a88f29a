"""One loaded base serves the base answer and several adapters (PEFT load_adapter / set_adapter)."""

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.tiny_model import build_random_adapter, build_tiny_model
from worker.config import GenerationConfig, TrainConfig, TrainSpec
from worker.engine import train
from worker.inference import (
    MIB,
    MemoryBudgetError,
    ModelPool,
    estimate_adapter_bytes,
    estimate_base_bytes,
    module_bytes,
)
from worker.reporting import MemoryReporter

IDS = torch.tensor([[1, 5, 9, 20, 33, 7, 11]])


def trained_adapter(tiny_llama, data, out, seed):
    cfg = TrainConfig(
        batch_size=4,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        target_preset="all_linear",
        rank=8,
        alpha=16,
        epochs=12,
        seed=seed,
    )
    return train(TrainSpec(str(tiny_llama), str(data), str(out), cfg, device="cpu"), MemoryReporter()).adapter_dir


def test_base_and_two_adapters_on_one_loaded_base(tiny_llama, chat_file, tmp_path):
    first = trained_adapter(tiny_llama, chat_file, tmp_path / "a", seed=1)
    second = trained_adapter(tiny_llama, chat_file, tmp_path / "b", seed=2)
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tiny_llama)(input_ids=IDS).logits
        own_first = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), first)(
            input_ids=IDS
        ).logits
        own_second = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), second)(
            input_ids=IDS
        ).logits

    pool = ModelPool(device="cpu")
    path = str(tiny_llama)
    assert torch.allclose(pool.logits(path, IDS), plain, atol=1e-5)
    assert torch.allclose(pool.logits(path, IDS, adapter=("first", first)), own_first, atol=1e-5)
    assert torch.allclose(pool.logits(path, IDS, adapter=("second", second)), own_second, atol=1e-5)
    # Back to the first adapter, and to the base through disable_adapter(): still exact.
    assert torch.allclose(pool.logits(path, IDS, adapter=("first", first)), own_first, atol=1e-5)
    assert torch.allclose(pool.logits(path, IDS), plain, atol=1e-5)
    assert not torch.allclose(own_first, own_second, atol=1e-4)
    assert pool.base_loads == 1
    assert set(pool.base(path).adapters) == {"first", "second"}

    messages = [{"role": "user", "content": "colour 2"}]
    pieces = []
    text = pool.generate(
        path, messages, GenerationConfig(max_new_tokens=16), adapter=("first", first), on_text=pieces.append
    )
    assert '"blue"' in text and "".join(pieces).strip() == text.strip() and len(pieces) >= 2
    assert pool.base_loads == 1


@pytest.fixture(scope="module")
def random_adapters(tiny_llama, tmp_path_factory):
    """Three random LoRA adapters on tiny_llama, of different sizes (ranks 4, 8, 4)."""
    root = tmp_path_factory.mktemp("adapters")
    return [
        build_random_adapter(tiny_llama, root / f"a{i}", seed=10 + i, rank=rank) for i, rank in enumerate((4, 8, 4))
    ]


def own_logits(model_dir, adapter_dir=None):
    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        if adapter_dir is not None:
            model = PeftModel.from_pretrained(model, adapter_dir)
        return model(input_ids=IDS).logits


def saved_bytes_at_fp32(adapter_dir) -> int:
    return sum(t.numel() * 4 for t in load_file(f"{adapter_dir}/adapter_model.safetensors").values())


def mb(n_bytes) -> float:
    return n_bytes / MIB


def test_adapters_cost_their_own_bytes_on_one_base(tiny_llama, random_adapters):
    path = str(tiny_llama)
    plain = own_logits(tiny_llama)
    own = [own_logits(tiny_llama, a) for a in random_adapters]
    pool = ModelPool(device="cpu")

    assert torch.allclose(pool.logits(path, IDS), plain, atol=1e-5)
    base_bytes = module_bytes(AutoModelForCausalLM.from_pretrained(tiny_llama))
    assert pool.accounted_bytes == base_bytes == estimate_base_bytes(path, torch.float32)
    for i, adapter in enumerate(random_adapters):
        before = pool.accounted_bytes
        assert torch.allclose(pool.logits(path, IDS, adapter=(f"a{i}", adapter)), own[i], atol=1e-5)
        grown = pool.accounted_bytes - before
        # The adapter's own weights (PEFT keeps them in fp32), nothing of the base.
        assert grown == saved_bytes_at_fp32(adapter) == estimate_adapter_bytes(adapter)
        assert grown < base_bytes / 10
    assert pool.base_loads == 1 and pool.adapter_loads == 3

    # Back and forth between adapters and the base: each gives its own logits, nothing is reloaded.
    for i in (0, 2, 1, 0):
        assert torch.allclose(pool.logits(path, IDS, adapter=(f"a{i}", random_adapters[i])), own[i], atol=1e-5)
        assert torch.allclose(pool.logits(path, IDS), plain, atol=1e-5)  # disable_adapter() == plain base
    assert not torch.allclose(own[0], own[2], atol=1e-3) and not torch.allclose(own[0], plain, atol=1e-3)
    stats = pool.stats()
    assert (stats["base_loads"], stats["adapter_loads"], stats["evictions"]) == (1, 3, 0)
    assert [b["path"] for b in stats["bases"]] == [str(tiny_llama.resolve())]
    assert list(stats["bases"][0]["adapters"]) == ["a2", "a1", "a0"]  # least recently used first
    assert stats["accounted_mb"] == round(mb(base_bytes + sum(map(saved_bytes_at_fp32, random_adapters))), 1)


def test_budget_evicts_the_least_recently_used_base(tiny_llama, tiny_gpt2, tmp_path):
    other_llama = build_tiny_model(tmp_path / "llama-b", "llama", seed=1)
    size = {p: estimate_base_bytes(str(p), torch.float32) for p in (tiny_llama, tiny_gpt2, other_llama)}
    # Room for any two of the three bases, never all three.
    budget = max(size[tiny_llama] + size[tiny_gpt2], size[tiny_llama] + size[other_llama]) + 1024
    assert budget < sum(size.values())
    pool = ModelPool(memory_budget_mb=mb(budget), device="cpu")

    def loaded():
        return [b["path"] for b in pool.stats()["bases"]]

    pool.base(str(tiny_llama))
    pool.base(str(tiny_gpt2))
    pool.base(str(tiny_llama))  # llama is now the most recently used
    assert pool.base_loads == 2
    pool.base(str(other_llama))
    assert loaded() == [str(tiny_llama.resolve()), str(other_llama.resolve())]  # gpt2 went, not llama
    pool.base(str(tiny_gpt2))
    assert loaded() == [str(other_llama.resolve()), str(tiny_gpt2.resolve())]
    assert pool.base_loads == 4 and pool.evictions == 2 and pool.accounted_bytes <= budget


def test_budget_and_cap_evict_the_least_recently_used_adapter(tiny_llama, random_adapters):
    path = str(tiny_llama)
    plain = own_logits(tiny_llama)
    own = [own_logits(tiny_llama, a) for a in random_adapters]
    a0, a1, a2 = (("a0", random_adapters[0]), ("a1", random_adapters[1]), ("a2", random_adapters[2]))
    base_bytes = estimate_base_bytes(path, torch.float32)
    # Room for the base with a0 and a1 (the two largest together), not a third.
    budget = base_bytes + sum(map(saved_bytes_at_fp32, random_adapters[:2])) + 16
    pool = ModelPool(memory_budget_mb=mb(budget), device="cpu")
    pool.logits(path, IDS, adapter=a0)
    pool.logits(path, IDS, adapter=a1)
    pool.logits(path, IDS, adapter=a0)  # a1 is now the least recently used
    assert torch.allclose(pool.logits(path, IDS, adapter=a2), own[2], atol=1e-5)
    assert list(pool.base(path).adapters) == ["a0", "a2"]
    assert torch.allclose(pool.logits(path, IDS, adapter=a0), own[0], atol=1e-5)
    assert torch.allclose(pool.logits(path, IDS), plain, atol=1e-5)
    assert pool.base_loads == 1 and pool.evictions == 1 and pool.accounted_bytes <= budget

    # A cap of one adapter per base: switching deletes the last adapter (back to the plain base) and reloads.
    capped = ModelPool(device="cpu", max_adapters_per_base=1)
    for i in (0, 1, 0):
        assert torch.allclose(capped.logits(path, IDS, adapter=(f"a{i}", random_adapters[i])), own[i], atol=1e-5)
        assert torch.allclose(capped.logits(path, IDS), plain, atol=1e-5)
        assert list(capped.base(path).adapters) == [f"a{i}"]
    assert capped.accounted_bytes == base_bytes + saved_bytes_at_fp32(random_adapters[0])
    assert (capped.base_loads, capped.adapter_loads, capped.evictions) == (1, 3, 2)


def test_a_base_larger_than_the_whole_budget_is_refused(tiny_llama, random_adapters):
    path = str(tiny_llama)
    base_bytes = estimate_base_bytes(path, torch.float32)
    small = ModelPool(memory_budget_mb=mb(base_bytes - 1), device="cpu")
    with pytest.raises(MemoryBudgetError, match="more than the whole inference memory budget"):
        small.base(path)
    assert small.base_loads == 0 and small.stats()["bases"] == []  # refused before loading anything

    # The base fits alone but not with the adapter: the adapter is refused, the base still answers.
    pool = ModelPool(memory_budget_mb=mb(base_bytes + 64), device="cpu")
    with pytest.raises(MemoryBudgetError, match="with adapter a0"):
        pool.logits(path, IDS, adapter=("a0", random_adapters[0]))
    assert torch.allclose(pool.logits(path, IDS), own_logits(tiny_llama), atol=1e-5)
    assert pool.stats()["bases"][0]["adapters"] == {} and pool.base_loads == 1

    with pytest.raises(ValueError, match="memory_budget_mb"):
        ModelPool(memory_budget_mb=0, device="cpu")


def test_generation_stops_when_asked(tiny_llama):
    """The stop button: generation ends after the token during which the flag was raised."""
    pool = ModelPool(device="cpu")
    path = str(tiny_llama)
    messages = [{"role": "user", "content": "colour 1"}]
    # The tiny model never says end-of-turn by itself, so an unstopped answer runs to max_new_tokens.
    pieces: list[str] = []
    full = pool.generate(path, messages, GenerationConfig(max_new_tokens=40), on_text=pieces.append)
    assert len(pool.base(path).tokenizer(full, add_special_tokens=False)["input_ids"]) >= 30
    asked = []

    def stop_after_three() -> bool:
        asked.append(1)
        return len(asked) >= 3

    stopped = pool.generate(path, messages, GenerationConfig(max_new_tokens=40), should_stop=stop_after_three)
    assert len(asked) == 3, "asked once per new token, and not after it said stop"
    assert full.startswith(stopped) and len(stopped) < len(full)


def test_one_batched_generate_answers_base_and_adapters_at_once(tiny_llama, random_adapters):
    """Both (all three) sides stream together: one generate call, each row through its own adapter."""
    path = str(tiny_llama)
    pool = ModelPool(device="cpu")
    gen = GenerationConfig(max_new_tokens=12)
    requests = [
        ([{"role": "user", "content": "colour 1"}], None),
        ([{"role": "user", "content": "colour 1"}], ("a0", random_adapters[0])),
        # a longer history on the third row: the batch is left-padded
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "colour 2"},
            ],
            ("a1", random_adapters[1]),
        ),
    ]
    one_by_one = [pool.generate(path, messages, gen, adapter) for messages, adapter in requests]
    assert len(set(one_by_one)) == 3, "the base and the two adapters answer differently"

    calls = []
    original = pool.base(path).model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs.get("adapter_names"))
        return original(*args, **kwargs)

    pool.base(path).model.generate = counting_generate
    order: list[int] = []
    pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}

    def on_text(row, piece):
        order.append(row)
        pieces[row].append(piece)

    together = pool.generate_many(path, requests, gen, on_text=on_text)
    assert calls == [["__base__", "a0", "a1"]], "one generate call with a mixed-adapter batch"
    assert together == one_by_one
    assert ["".join(pieces[i]) for i in range(3)] == [t for t in together]
    # Interleaved: the second row's first piece arrives before the first row's last one.
    assert order.index(1) < len(order) - 1 - order[::-1].index(0)
    assert pool.base_loads == 1


def test_batched_generate_falls_back_for_dora_adapters(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    dora = tmp_path / "dora"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(dora)
    pool = ModelPool(device="cpu")
    gen = GenerationConfig(max_new_tokens=8)
    requests = [
        ([{"role": "user", "content": "colour 1"}], None),
        ([{"role": "user", "content": "colour 1"}], ("dora", str(dora))),
    ]
    expected = [pool.generate(str(tiny_llama), m, gen, a) for m, a in requests]
    rows: list[int] = []
    assert pool.generate_many(str(tiny_llama), requests, gen, on_text=lambda row, piece: rows.append(row)) == expected
    assert rows == sorted(rows), "one row after the other"
