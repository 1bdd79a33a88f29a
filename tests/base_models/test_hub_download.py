"""Base models from the Hugging Face Hub, against a local stand-in that serves the Hub's file API for the
tiny model: a download that resumes after a dropped connection, and the refusals (remote code, pickle-only
weights, too large, an inside address without the admin's allow-list, OFFLINE)."""

import io
import json
import shutil
from pathlib import Path
from unittest import mock

import pytest
from django.core.management import call_command

from jobs.base_models import services
from jobs.base_models.hub_tokens import hub_token_of
from jobs.base_models.models import BaseModel, ModelStatus
from jobs.common import events, queue
from jobs.common.exceptions import ProductError
from tests.base_models.hub_server import folder_files, hub_handler
from tests.local_http import local_http_server

pytestmark = pytest.mark.django_db
SLOW_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages }}"


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("root", is_staff=True)


@pytest.fixture(scope="module")
def hub_repos(tiny_llama):
    tiny = folder_files(tiny_llama)
    config = json.loads(tiny["config.json"])
    remote = dict(
        tiny,
        **{
            "config.json": json.dumps(
                dict(config, auto_map={"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
            ).encode(),
            "modeling_custom.py": b"import os\n",
        },
    )
    pickled = {"config.json": tiny["config.json"], "pytorch_model.bin": b"\x80\x04pickle", "README.md": b"hi"}
    slow = dict(tiny, **{"chat_template.jinja": SLOW_TEMPLATE.encode()})
    return {"org/tiny": tiny, "org/remote-code": remote, "org/pickled": pickled, "org/slow-template": slow}


@pytest.fixture(scope="module")
def hub_server(hub_repos):
    handler = hub_handler(hub_repos, drop_once={"model.safetensors"})
    with local_http_server(handler) as url:
        handler.url = url
        yield handler


@pytest.fixture
def hub(settings, tmp_path, hub_server, real_redis):
    """The stand-in Hub, allowed by the admin's list (it listens on 127.0.0.1), with a fresh request log."""
    hub_server.log, hub_server.dropped = [], set()
    settings.HF_ENDPOINT = hub_server.url
    settings.OFFLINE = False
    settings.HUB_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.HUB_ALLOWED_PORTS = [(1, 65535)]
    return hub_server


def _download(staff, hub_id, **kw) -> BaseModel:
    model = services.base_model_add_from_hub(by=staff, hub_id=hub_id, **kw)
    assert model.status == ModelStatus.QUEUED
    services.base_model_download(model_id=model.id)  # the background task's body
    return BaseModel.objects.get(id=model.id)


def test_download_resumes_a_dropped_connection_and_describes_the_model(staff, hub, tiny_llama):
    model = _download(staff, "org/tiny", token="hf_secret")
    assert model.status == ModelStatus.READY, model.error
    assert (model.architecture, model.context_length, model.has_chat_template) == ("LlamaForCausalLM", 512, True)
    assert model.parameters > 0 and "self_attn.q_proj" in model.linear_modules
    assert model.bytes_total == model.bytes_done == sum(len(b) for b in folder_files(tiny_llama).values())
    assert hub_token_of(model.id) == ""  # not kept once the download ended
    weights = (tiny_llama / "model.safetensors").read_bytes()
    assert (services.model_folder(model) / "model.safetensors").read_bytes() == weights
    assert model.path == str(services.model_folder(model))
    # The first transfer broke half-way; the second asked for the rest only, on the CDN the Hub redirected to.
    ranges = [r for p, r, _ in hub.log if p == "/cdn/org/tiny/model.safetensors"]
    assert ranges[0] == "" and ranges[1] == f"bytes={len(weights) // 2}-", ranges
    # The token goes to the Hub's own host (here the CDN is the same host) and to nothing else.
    assert all(auth == "Bearer hf_secret" for _, _, auth in hub.log)
    assert not list(services.model_folder(model).glob("*.part"))


def database_text() -> str:
    """Every row of every table, as text."""
    out = io.StringIO()
    call_command("dumpdata", stdout=out)
    return out.getvalue()


def test_the_hub_token_never_reaches_the_database_nor_a_task_message(staff, hub, real_redis):
    with mock.patch.object(queue, "enqueue") as sent:
        model = services.base_model_add_from_hub(by=staff, hub_id="org/tiny", token="hf_private_42")
    assert "hf_private_42" not in database_text() and "hf_private_42" not in repr(sent.call_args_list)
    assert real_redis.ttl(f"hub-token:{model.id}") > 0  # kept in Redis, for a while only
    services.base_model_download(model_id=model.id)
    assert BaseModel.objects.get(id=model.id).status == ModelStatus.READY
    assert hub.log and all(auth == "Bearer hf_private_42" for _, _, auth in hub.log)
    assert hub_token_of(model.id) == "" and "hf_private_42" not in database_text()


def test_a_failed_download_forgets_its_token(staff, hub):
    model = _download(staff, "org/pickled", token="hf_private_43")
    assert model.status == ModelStatus.FAILED and hub_token_of(model.id) == ""


def test_a_token_that_cannot_be_kept_refuses_the_download(staff, hub, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    events.redis_client.cache_clear()
    with pytest.raises(ProductError, match="token cannot be kept"):
        services.base_model_add_from_hub(by=staff, hub_id="org/tiny", token="hf_private_44")
    assert not BaseModel.objects.exists()


def test_a_download_whose_worker_died_resumes_its_partial_file(staff, hub, tiny_llama):
    """A redelivered task (the worker was killed mid-file) continues from the bytes already on disk."""
    model = services.base_model_add_from_hub(by=staff, hub_id="org/tiny")
    weights = (tiny_llama / "model.safetensors").read_bytes()
    folder = services.model_folder(model)
    folder.mkdir(parents=True)
    (folder / "model.safetensors.part").write_bytes(weights[:1000])
    BaseModel.objects.filter(id=model.id).update(status=ModelStatus.DOWNLOADING)
    services.base_model_download(model_id=model.id)
    model.refresh_from_db()
    assert model.status == ModelStatus.READY, model.error
    assert [r for p, r, _ in hub.log if p.endswith("model.safetensors")][0] == "bytes=1000-"
    assert (folder / "model.safetensors").read_bytes() == weights


def test_a_model_that_needs_remote_code_is_refused_before_any_weight(staff, hub):
    model = _download(staff, "org/remote-code")
    assert model.status == ModelStatus.FAILED
    assert "remote code" in model.error and "auto_map" in model.error
    assert not any("safetensors" in p or "modeling_custom" in p for p, _, _ in hub.log)
    assert not services.model_folder(model).exists()


def test_pickle_only_weights_are_refused(staff, hub):
    model = _download(staff, "org/pickled")
    assert model.status == ModelStatus.FAILED
    assert "no safetensors weights" in model.error and "pytorch_model.bin" in model.error
    assert not any("pytorch_model.bin" in p for p, _, _ in hub.log)


def test_a_model_larger_than_the_largest_worker_is_refused_before_the_download(staff, hub, monkeypatch):
    monkeypatch.setattr(services, "_worker_memory_probes", [lambda: 0.01])  # a 10 kB worker
    model = _download(staff, "org/tiny")
    assert model.status == ModelStatus.FAILED and "largest train worker's memory" in model.error
    assert not any("safetensors" in p for p, _, _ in hub.log)


def test_an_unknown_repository_names_the_id(staff, hub):
    model = _download(staff, "org/missing")
    assert model.status == ModelStatus.FAILED and "not found" in model.error and "org/missing" in model.error


def test_the_hub_address_must_not_be_inside_the_network_unless_allowed(staff, hub, settings):
    settings.HUB_ALLOWED_HOSTS = []
    model = _download(staff, "org/tiny")
    assert model.status == ModelStatus.FAILED and "refused: loopback address" in model.error
    assert hub.log == []


def test_offline_refuses_with_a_clear_message(staff, settings, api):
    settings.OFFLINE = True
    with pytest.raises(services.ProductError, match="offline"):
        services.base_model_add_from_hub(by=staff, hub_id="org/tiny")
    settings.USER_MODELS = True
    response = api.post("/api/v1/base-models/", {"source": "hub", "hub_id": "org/tiny"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "hub_id" and "OFFLINE" in response.json()["error"]["message"]
    assert not BaseModel.objects.exists()


@pytest.mark.parametrize("hub_id", ["../etc", "a/b/c", "", "org/" + "x" * 200])
def test_a_bad_hub_id_is_a_400_naming_it(settings, api, hub_id):
    settings.USER_MODELS, settings.OFFLINE = True, False
    response = api.post("/api/v1/base-models/", {"source": "hub", "hub_id": hub_id}, format="json")
    assert response.status_code == 400 and "hub_id" in json.dumps(response.json())


def test_with_an_object_store_the_model_is_published_for_other_machines(staff, hub, object_store, tiny_llama):
    model = _download(staff, "org/tiny")
    assert model.status == ModelStatus.READY, model.error
    assert model.path.startswith(f"s3://{object_store}/") and model.path.endswith(f"base-models/{model.id}")
    shutil.rmtree(services.model_folder(model))  # another machine: nothing of it on this disk
    local = Path(model.local_path)  # fetched from the store into the model cache
    assert (local / "model.safetensors").read_bytes() == (tiny_llama / "model.safetensors").read_bytes()
    services.base_model_delete(by=staff, model=model)
    from jobs.common import blobs

    assert not blobs.exists(f"base-models/{model.id}")


def test_a_download_whose_chat_template_loops_for_ever_is_refused_with_the_reason(staff, hub):
    model = _download(staff, "org/slow-template")
    assert model.status == ModelStatus.FAILED
    assert model.error.startswith("the model's chat template is refused: the chat template runs more than 1,000,000")
    assert not services.model_folder(model).exists()
