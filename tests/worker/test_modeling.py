"""The web side's bounded tokenizer cache."""

import pytest

from worker import modeling


@pytest.fixture
def loads(monkeypatch):
    calls = []

    def fake_load(path):
        calls.append(path)
        return object()

    monkeypatch.setattr(modeling, "load_tokenizer", fake_load)
    modeling.cached_tokenizer.cache_clear()
    yield calls
    modeling.cached_tokenizer.cache_clear()


def test_a_cached_tokenizer_is_loaded_once(loads):
    first = modeling.cached_tokenizer("models/a")
    assert modeling.cached_tokenizer("models/a") is first
    assert modeling.cached_tokenizer("models/b") is not first
    assert loads == ["models/a", "models/b"]


def test_the_least_recently_used_tokenizer_is_evicted(loads):
    size = modeling.TOKENIZER_CACHE_SIZE
    for i in range(size):
        modeling.cached_tokenizer(f"models/{i}")
    modeling.cached_tokenizer("models/0")  # now the most recently used
    modeling.cached_tokenizer("models/new")  # evicts models/1
    assert modeling.cached_tokenizer.cache_info().currsize == size
    loads.clear()
    modeling.cached_tokenizer("models/0")
    modeling.cached_tokenizer("models/1")
    assert loads == ["models/1"]


def test_a_failed_load_is_not_cached(monkeypatch):
    modeling.cached_tokenizer.cache_clear()
    monkeypatch.setattr(modeling, "load_tokenizer", lambda path: (_ for _ in ()).throw(OSError(path)))
    with pytest.raises(OSError):
        modeling.cached_tokenizer("models/missing")
    assert modeling.cached_tokenizer.cache_info().currsize == 0


def test_fsdp_refuses_a_layer_that_trains_two_dtypes(tiny_llama):
    """FSDP reduce-scatters a unit's gradients as one tensor: a layer training fp32 LoRA next to a bf16 weight
    (a trained bias on a bf16 GPU base) is refused before sharding, naming the setting; one dtype is fine."""
    import pytest
    import torch
    from transformers import AutoModelForCausalLM

    from worker.config import ConfigError, TrainConfig
    from worker.modeling import build_peft_model
    from worker.sharding import check_trained_dtypes, decoder_layers

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    for p in base.parameters():
        p.requires_grad_(False)
    model, _ = build_peft_model(base, TrainConfig(target_preset="attention"))
    causal = model.get_base_model()
    units = decoder_layers(causal) + [causal]
    check_trained_dtypes(units)
    norm = units[1].input_layernorm.weight
    norm.data = norm.data.to(torch.bfloat16)
    norm.requires_grad_(True)
    with pytest.raises(ConfigError, match="trains bfloat16 and float32 ones") as info:
        check_trained_dtypes(units)
    assert info.value.field == "sharding"
