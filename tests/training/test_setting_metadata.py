"""The form, the REST API's OpenAPI schema and the OpenAI layer take each setting's label, help and limits
from TrainConfig's field metadata."""

from django import forms

from jobs.openai_compat import fine_tuning
from jobs.training.forms import JobForm
from tests.factories import bearer_client
from worker.config import setting_metadata
from worker.errors import ConfigError, InputError

SETTINGS = setting_metadata()


def test_the_form_fields_carry_the_metadata(user):
    form = JobForm(owner=user)
    for name, meta in SETTINGS.items():
        field = form.fields[name]
        assert field.label == meta["plain"] and field.help_text == meta["help"], name
        if meta["choices"] is not None:
            assert list(field.choices) == list(meta["choices"].items()), name
        if meta["type"] in ("int", "float"):
            assert field.widget.attrs["min"] == str(meta["min"]) and field.widget.attrs["max"] == str(meta["max"])
        if meta["type"] == "bool":
            assert isinstance(field, forms.BooleanField)
    assert form.fields["rank"].initial == 16 and isinstance(form.fields["rank"], forms.IntegerField)
    assert isinstance(form.fields["alpha"], forms.FloatField), "a float setting with an int default stays a float"
    html = str(form["rank"])
    assert 'min="1"' in html and 'max="1024"' in html and 'id="id_rank"' in html and 'name="rank"' in html


def test_the_job_create_schema_describes_each_setting_from_the_metadata(user):
    schema = bearer_client(user).get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    body = components["JobCreateRequest"]["properties"]["config"]
    config = components[body["$ref"].rsplit("/", 1)[1]]
    assert components["EstimateRequestRequest"]["properties"]["config"] == body
    assert config["additionalProperties"] is False and set(config["properties"]) == {"preset", *SETTINGS}
    rank = config["properties"]["rank"]
    assert rank["description"] == SETTINGS["rank"]["help"] and rank["title"] == "Rank"
    assert (rank["type"], rank["minimum"], rank["maximum"], rank["default"]) == ("integer", 1, 1024, 16)
    alpha = config["properties"]["alpha"]
    assert alpha["type"] == "number" and alpha["minimum"] == 0 and alpha["exclusiveMinimum"] is True
    method = config["properties"]["method"]  # drf-spectacular moves enums into components of their own
    enum = components[method["allOf"][0]["$ref"].rsplit("/", 1)[1]]["enum"] if "allOf" in method else method["enum"]
    assert enum == list(SETTINGS["method"]["choices"]) and method["description"] == SETTINGS["method"]["help"]


def test_the_openai_extras_come_from_the_metadata():
    assert fine_tuning.LORA_FIELDS == tuple(n for n, m in SETTINGS.items() if m["openai"] == "lora")
    assert {"rank", "alpha", "qlora", "precision", "liger"} <= set(fine_tuning.LORA_FIELDS)
    assert fine_tuning.HYPER_FIELDS == {"n_epochs", "batch_size", "learning_rate_multiplier"}
    assert fine_tuning.HYPER_SETTINGS["n_epochs"] == "epochs" and fine_tuning.HYPER_SETTINGS["beta"] == "beta"
    assert fine_tuning.openai_param("beta", "dpo") == "method.dpo.hyperparameters.beta"
    assert fine_tuning.openai_param("epochs", "supervised") == "hyperparameters.n_epochs"
    assert fine_tuning.openai_param("packing", "supervised") == "lora.packing"


def test_a_missing_start_from_job_is_an_input_error_not_a_setting_error(user, base_model):
    import uuid

    import pytest

    from jobs.training.plan import job_start_config
    from worker.config import TrainConfig

    with pytest.raises(InputError) as err:
        job_start_config(owner=user, base_model=base_model, config=TrainConfig(start_from=str(uuid.uuid4())))
    assert not isinstance(err.value, ConfigError) and (err.value.field, err.value.message) == (
        "start_from",
        "no such job",
    )


def test_the_form_groups_each_setting_where_its_metadata_says():
    from jobs.training.forms import FIELDSETS

    for group, names in FIELDSETS:
        for name in names:
            if name in SETTINGS:
                assert SETTINGS[name]["group"] == group, name
