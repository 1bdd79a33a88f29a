"""One loaded base serves the base answer and several adapters (PEFT load_adapter / set_adapter)."""
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from worker.config import GenerationConfig, TrainConfig, TrainSpec
from worker.engine import train
from worker.inference import ModelPool
from worker.reporting import MemoryReporter

IDS = torch.tensor([[1, 5, 9, 20, 33, 7, 11]])


def trained_adapter(tiny_llama, data, out, seed):
    cfg = TrainConfig(batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, target_preset="all_linear", rank=8,
                      alpha=16, epochs=12, seed=seed)
    return train(TrainSpec(str(tiny_llama), str(data), str(out), cfg, device="cpu"), MemoryReporter()).adapter_dir


def test_base_and_two_adapters_on_one_loaded_base(tiny_llama, chat_file, tmp_path):
    first = trained_adapter(tiny_llama, chat_file, tmp_path / "a", seed=1)
    second = trained_adapter(tiny_llama, chat_file, tmp_path / "b", seed=2)
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tiny_llama)(input_ids=IDS).logits
        own_first = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), first)(input_ids=IDS).logits
        own_second = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), second)(input_ids=IDS).logits

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
    text = pool.generate(path, messages, GenerationConfig(max_new_tokens=16), adapter=("first", first),
                         on_text=pieces.append)
    assert '"blue"' in text and "".join(pieces).strip() == text.strip() and len(pieces) >= 2
    assert pool.base_loads == 1


def test_pool_evicts_the_least_recently_used_base(tiny_llama, tiny_gpt2):
    pool = ModelPool(max_bases=1, device="cpu")
    pool.base(str(tiny_llama))
    pool.base(str(tiny_gpt2))
    pool.base(str(tiny_gpt2))
    assert pool.base_loads == 2
    pool.base(str(tiny_llama))
    assert pool.base_loads == 3
