import math

import pytest

from worker.config import ConfigError, GenerationConfig, TrainConfig, TrainSpec
from worker.targets import classify, resolve_targets

LLAMA = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]
GPT2 = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def test_defaults_are_the_documented_ones():
    cfg = TrainConfig()
    assert (cfg.rank, cfg.alpha, cfg.target_preset, cfg.qlora) == (16, 32, "attention", False)
    assert cfg.scaling == 2.0


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("rank", 0, "rank: must be between 1 and 1024 (you gave 0)"),
        ("rank", 2.5, "rank: must be a whole number"),
        ("alpha", 0, "alpha: must be more than 0 and at most 4096 (you gave 0)"),
        ("dropout", 0.95, "dropout: must be between 0 and 0.9"),
        ("learning_rate", float("nan"), "learning_rate: must be a finite number"),
        ("target_preset", "everything", "target_preset: must be one of attention, mlp, all_linear, custom"),
        ("qlora", "yes", "qlora: must be true or false"),
        ("batch_size", True, "batch_size: must be a whole number"),
        ("lr_scheduler", "step", "lr_scheduler: must be one of linear, cosine, constant"),
    ],
)
def test_bad_values_name_the_field(field, value, fragment):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**{field: value})
    assert err.value.field == field
    assert fragment in str(err.value)


def test_custom_targets_need_a_list_and_the_custom_preset():
    with pytest.raises(ConfigError, match="target_modules: list at least one"):
        TrainConfig(target_preset="custom")
    with pytest.raises(ConfigError, match="only allowed when target layers is 'custom'"):
        TrainConfig(target_modules=("q_proj",))
    assert TrainConfig(target_preset="custom", target_modules="q_proj, v_proj").target_modules == ("q_proj", "v_proj")
    with pytest.raises(ConfigError, match="not a valid module name"):
        TrainConfig(target_preset="custom", target_modules=["q_proj; rm -rf"])


def test_from_dict_rejects_unknown_keys_and_round_trips():
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"rnak": 8})
    assert err.value.field == "rnak"
    cfg = TrainConfig(rank=8, alpha=16, use_rslora=True)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert math.isclose(cfg.scaling, 16 / math.sqrt(8))
    spec = TrainSpec("m", "d", "o", cfg)
    assert TrainSpec.from_dict(spec.to_dict()) == spec


def test_generation_config_validation():
    with pytest.raises(ConfigError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ConfigError, match="top_p"):
        GenerationConfig(top_p=0)


def test_presets_for_llama_and_gpt2_names():
    assert resolve_targets(LLAMA, "attention") == LLAMA[:4]
    assert resolve_targets(LLAMA, "mlp") == LLAMA[4:]
    assert resolve_targets(LLAMA, "all_linear") == LLAMA
    assert resolve_targets(GPT2, "attention") == ["attn.c_attn", "attn.c_proj"]
    # GPT-2 uses c_proj in both blocks: the suffix keeps them apart.
    assert resolve_targets(GPT2, "mlp") == ["mlp.c_fc", "mlp.c_proj"]
    assert classify("self_attention.dense") == "attention"


def test_custom_list_is_checked_against_the_model():
    assert resolve_targets(LLAMA, "custom", ["q_proj", "down_proj"]) == ["self_attn.q_proj", "mlp.down_proj"]
    with pytest.raises(ConfigError) as err:
        resolve_targets(LLAMA, "custom", ["query"])
    assert err.value.field == "target_modules"
    assert "'query' is not a Linear layer of this model" in err.value.message
    assert "q_proj" in err.value.message and "down_proj" in err.value.message


def test_problems_lists_every_broken_field_at_once():
    found = TrainConfig.problems(
        {"rank": 0, "dropout": 2.0, "batch_size": 2, "devices": 4, "seed": 7, "bias": "some", "colour": "red"}
    )
    assert [e.field for e in found] == ["colour", "rank", "dropout", "bias", "devices"]
    assert "must be between 0 and 0.9 (you gave 2.0)" in found[2].message
    assert TrainConfig.problems({"rank": 8, "alpha": 16}) == []
    # A rule between two fields, broken only through a default, is reported once and the listing stops.
    assert [e.field for e in TrainConfig.problems({"target_preset": "custom"})] == ["target_modules"]
