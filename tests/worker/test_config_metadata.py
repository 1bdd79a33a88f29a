"""TrainConfig's field metadata is the one source of each setting's label, help and limits: every field has
them, and the validation reads them (a limit changed there changes what is refused)."""

import dataclasses

import pytest

from worker.config import GenerationConfig, TrainConfig, setting, setting_metadata
from worker.data.problems import DatasetError
from worker.errors import ConfigError, InputError, StudioError
from worker.setting_fields import SETTING_GROUPS


@pytest.mark.parametrize("cls", [TrainConfig, GenerationConfig])
def test_every_setting_has_a_label_help_and_a_group(cls):
    for name, meta in setting_metadata(cls).items():
        assert meta["label"].strip() and meta["help"].strip(), name
        assert meta["help"][0].isupper() and meta["help"].endswith("."), (name, meta["help"])
        # A job setting sits in one of the job form's groups; the chat's settings are in no such group.
        assert meta["group"] in SETTING_GROUPS if cls is TrainConfig else meta["group"] == "", name
        assert meta["plain"].strip(), name
        if meta["type"] in ("int", "float") and meta["choices"] is None:
            assert meta["min"] is not None and meta["max"] is not None, f"{name} has no limits"
        if meta["choices"] is not None:
            assert meta["default"] in meta["choices"] and all(meta["choices"].values()), name


def test_out_of_range_errors_quote_the_metadata_limits():
    for name, meta in setting_metadata().items():
        if meta["type"] not in ("int", "float"):
            continue
        too_high = meta["max"] + 1
        with pytest.raises(ConfigError) as err:
            TrainConfig(**{name: too_high})
        assert err.value.field == name
        low = "more than" if meta["min_exclusive"] else "between"
        assert f"{low} {meta['min']:g} and" in err.value.message and f"{meta['max']:g}" in err.value.message, name


def test_choice_errors_list_the_metadata_choices():
    for name, meta in setting_metadata().items():
        if meta["choices"] is None:
            continue
        with pytest.raises(ConfigError) as err:
            TrainConfig(**{name: "nope"})
        assert err.value.field == name and f"one of {', '.join(meta['choices'])}" in err.value.message


def test_a_limit_changed_in_the_metadata_changes_the_validation():
    @dataclasses.dataclass(frozen=True)
    class SmallRanks(TrainConfig):
        rank: int = setting(8, label="Rank", help="At most 32 here.", min=1, max=32)

    assert TrainConfig(rank=64).rank == 64
    with pytest.raises(ConfigError, match=r"rank: must be between 1 and 32 \(you gave 64\)"):
        SmallRanks(rank=64)
    assert SmallRanks(rank=32).rank == 32 and SmallRanks().rank == 8


def test_settings_keep_their_order_and_defaults():
    meta = setting_metadata()
    assert list(meta) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert {name: m["default"] for name, m in meta.items()} == TrainConfig().to_dict() | {
        "target_modules": (),
        "modules_to_save": (),
    }


def test_one_error_tree():
    from jobs.common.exceptions import ProductError, StateError

    assert issubclass(ConfigError, InputError) and issubclass(InputError, StudioError)
    assert issubclass(InputError, ValueError) and issubclass(DatasetError, StudioError)
    assert issubclass(StateError, ProductError) and issubclass(ProductError, StudioError)
    err = InputError("dataset", "no such dataset")
    assert str(err) == "dataset: no such dataset" and err.body() == {"field": "dataset", "message": "no such dataset"}
    assert err.status == 400 and StateError("finished").status == 409
