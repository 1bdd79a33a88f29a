"""The base-model catalogue over REST and on the Models page: who may add what, private models seen by their
owner only, the folder and GGUF sources, what each model shows, and deletion refused while a job uses it."""

import shutil
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.base_models import selectors, services
from jobs.base_models.models import BaseModel, ModelSource, ModelStatus
from tests.factories import bearer_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("root", is_staff=True)


@pytest.fixture
def api_staff(staff):
    return bearer_client(staff)


def test_staff_register_a_folder_and_it_shows_what_a_job_needs(api_staff, tiny_llama, api):
    response = api_staff.post(
        "/api/v1/base-models/", {"source": "folder", "name": "tiny", "path": str(tiny_llama)}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["shared"], body["source"], body["context_length"], body["has_chat_template"]) == (
        "ready",
        True,
        "folder",
        512,
        True,
    )
    assert body["parameters"] > 0
    assert [m["name"] for m in api.get("/api/v1/base-models/").json()] == ["tiny"]  # shared: every user sees it


def test_only_staff_register_a_server_folder(settings, api, tiny_llama):
    settings.USER_MODELS = True
    response = api.post(
        "/api/v1/base-models/", {"source": "folder", "name": "x", "path": str(tiny_llama)}, format="json"
    )
    assert response.status_code == 403 and response.json()["error"]["field"] == "path"


def test_without_user_models_only_staff_add(settings, api):
    settings.USER_MODELS = False
    response = api.post("/api/v1/base-models/", {"source": "hub", "hub_id": "org/tiny"}, format="json")
    assert response.status_code == 403 and "USER_MODELS" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "path,message", [("relative/dir", "is not an absolute path"), ("/nonexistent/m", "does not exist on the server")]
)
def test_a_bad_folder_is_a_400_naming_the_path(api_staff, path, message):
    response = api_staff.post("/api/v1/base-models/", {"source": "folder", "name": "x", "path": path}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "path" and message in response.json()["error"]["message"]


def test_an_empty_or_model_less_folder_says_it_holds_no_model_files(api_staff, tiny_llama, tmp_path):
    """An absolute folder without a model is refused for what it lacks, never as "not an absolute path"."""
    empty = tmp_path / "empty"
    empty.mkdir()
    half = shutil.copytree(tiny_llama, tmp_path / "half")
    for weights in half.glob("*.safetensors"):
        weights.unlink()
    expected = {
        empty: f"The folder {empty} holds no model files (config.json and *.safetensors)",
        half: f"The folder {half} has a config.json but no .safetensors weights (pickle-based weights are never loaded)",
    }
    for folder, message in expected.items():
        response = api_staff.post(
            "/api/v1/base-models/", {"source": "folder", "name": "x", "path": str(folder)}, format="json"
        )
        assert response.status_code == 400
        assert response.json()["error"] == {"field": "path", "message": message}
        assert "absolute" not in response.json()["error"]["message"]
    assert not BaseModel.objects.exists()


def test_a_folder_with_remote_code_is_refused(api_staff, tiny_llama, tmp_path):
    import json

    folder = shutil.copytree(tiny_llama, tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, auto_map={"AutoModel": "x.Y"})))
    response = api_staff.post(
        "/api/v1/base-models/", {"source": "folder", "name": "c", "path": str(folder)}, format="json"
    )
    assert response.status_code == 400 and "remote code" in response.json()["error"]["message"]
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="remote code"):
        call_command("register_model", "c", str(folder))
    assert not BaseModel.objects.exists()


def test_private_models_are_their_owners_only(settings, user, other_user, api, api_bob, real_redis):
    settings.USER_MODELS, settings.OFFLINE = True, False
    response = api.post("/api/v1/base-models/", {"source": "hub", "hub_id": "org/tiny", "token": "hf_x"}, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["status"], body["shared"], body["name"]) == ("queued", False, "org/tiny")
    assert "token" not in body and "hub_token" not in body
    model_id = body["id"]
    BaseModel.objects.filter(id=model_id).update(status=ModelStatus.READY)
    assert [m["id"] for m in api.get("/api/v1/base-models/").json()] == [model_id]
    assert api_bob.get("/api/v1/base-models/").json() == []
    assert api_bob.get(f"/api/v1/base-models/{model_id}/").status_code == 404
    assert api_bob.delete(f"/api/v1/base-models/{model_id}/").status_code == 404
    # The selectors every other app uses: the owner's model for the owner, nothing for anyone else.
    assert selectors.base_model_find(model_id, owner=user) is not None
    assert selectors.base_model_find(model_id, owner=other_user) is None
    assert selectors.base_model_find(model_id) is None  # no owner given: shared models only
    assert api.delete(f"/api/v1/base-models/{model_id}/").status_code == 204
    assert not BaseModel.objects.filter(id=model_id).exists()


def test_a_model_in_use_cannot_be_deleted(api_staff, staff, user, dataset, base_model):
    from jobs.training.models import FineTuneJob
    from worker.config import TrainConfig

    job = FineTuneJob.objects.create(
        owner=user, dataset=dataset, base_model=base_model, config=TrainConfig().to_dict(), name="colours-run"
    )
    response = api_staff.delete(f"/api/v1/base-models/{base_model.id}/")
    assert response.status_code == 409
    assert "used by 1 fine-tuning job" in response.json()["error"]["message"]
    detail = bearer_client(user).get(f"/api/v1/base-models/{base_model.id}/").json()
    assert [j["name"] for j in detail["jobs"]] == ["colours-run"] and detail["jobs_total"] == 1
    assert api_staff.get(f"/api/v1/base-models/{base_model.id}/").json()["jobs"] == []  # others' jobs: counted only
    job.delete()
    assert api_staff.delete(f"/api/v1/base-models/{base_model.id}/").status_code == 204


def test_a_shared_model_is_deleted_by_staff_only(api, base_model):
    response = api.delete(f"/api/v1/base-models/{base_model.id}/")
    assert response.status_code == 403 and BaseModel.objects.filter(id=base_model.id).exists()


def test_names_are_unique_per_owner_so_one_user_cannot_learn_or_take_anothers(
    settings, user, other_user, api, api_bob, api_staff, base_model
):
    settings.USER_MODELS, settings.OFFLINE = True, False

    def add(client, name):
        return client.post("/api/v1/base-models/", {"source": "hub", "hub_id": "org/tiny", "name": name}, format="json")

    alice = add(api, "my-model")
    bob = add(api_bob, "my-model")  # alice's private name tells bob nothing and does not stop him
    assert alice.status_code == bob.status_code == 202, bob.content
    ids = {alice.json()["id"], bob.json()["id"]}
    BaseModel.objects.filter(id__in=ids).update(status=ModelStatus.READY)
    assert [m["id"] for m in api.get("/api/v1/base-models/").json() if m["name"] == "my-model"] == [alice.json()["id"]]
    assert [m["id"] for m in api_bob.get("/api/v1/base-models/").json() if m["name"] == "my-model"] == [
        bob.json()["id"]
    ]
    assert str(selectors.base_model_named(owner=user, name="my-model").id) == alice.json()["id"]
    assert str(selectors.base_model_named(owner=other_user, name="my-model").id) == bob.json()["id"]
    assert selectors.base_model_named(owner=None, name="my-model") is None
    # Twice for one owner, or a name a shared model has, is still refused.
    assert add(api, "my-model").status_code == 400
    assert add(api, "tiny-llama").status_code == 400
    # Staff may later share a model under a user's private name; for that user the name still means theirs.
    shared = add(api_staff, "my-model")
    assert shared.status_code == 202 and shared.json()["shared"]
    BaseModel.objects.filter(id=shared.json()["id"]).update(status=ModelStatus.READY)
    assert str(selectors.base_model_named(owner=user, name="my-model").id) == alice.json()["id"]
    assert [m["id"] for m in api.get("/v1/models").json()["data"]].count("my-model") == 1
    from jobs.openai_compat.fine_tuning import resolve_model  # the OpenAI API's `model` lookup

    assert str(resolve_model(user, "my-model")[0].id) == alice.json()["id"]
    assert str(resolve_model(other_user, "my-model")[0].id) == bob.json()["id"]


def test_a_gguf_upload_is_converted_by_a_worker_into_the_same_model(settings, api, user, tiny_llama, tmp_path):
    """A GGUF written from the tiny model (tiny_gguf.py) goes through the upload and the worker's conversion and
    comes back as a safetensors folder with the same logits, tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.base_models.tiny_gguf import write_tiny_gguf

    settings.USER_MODELS = True
    gguf = write_tiny_gguf(tiny_llama, tmp_path / "tiny.F32.gguf")
    with open(gguf, "rb") as f:
        response = api.post("/api/v1/base-models/", {"source": "gguf", "file": f}, format="multipart")
    assert response.status_code == 202, response.content
    model = BaseModel.objects.get(id=response.json()["id"])
    assert (model.name, model.source, model.owner, model.status) == ("tiny.F32", ModelSource.GGUF, user, "queued")
    services.base_model_convert_gguf(model_id=model.id)  # the background task's body
    model.refresh_from_db()
    assert model.status == ModelStatus.READY, model.error
    assert (model.architecture, model.context_length, model.has_chat_template) == ("LlamaForCausalLM", 512, True)
    assert not (services.model_folder(model) / "upload.gguf").exists()
    ids = torch.tensor([[1, 5, 9, 30, 77, 2]])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(tiny_llama)(ids).logits
        got = AutoModelForCausalLM.from_pretrained(model.local_path)(ids).logits
    assert torch.allclose(want, got, atol=1e-6)
    text = "The quick brown fox, hello world"
    assert (
        AutoTokenizer.from_pretrained(model.local_path)(text).input_ids
        == AutoTokenizer.from_pretrained(tiny_llama)(text).input_ids
    )


def test_a_gguf_that_cannot_be_converted_fails_with_the_reason(settings, api):
    settings.USER_MODELS = True
    upload = SimpleUploadedFile("broken.gguf", b"GGUF" + b"\xff" * 60)
    model_id = api.post("/api/v1/base-models/", {"source": "gguf", "file": upload}, format="multipart").json()["id"]
    services.base_model_convert_gguf(model_id=model_id)
    model = BaseModel.objects.get(id=model_id)
    assert (
        model.status == ModelStatus.FAILED
        and model.error == "This GGUF file is of version 4294967295, which is not supported (versions 2 and 3 are)"
    )


def test_a_failed_conversion_shows_a_plain_reason_not_the_exception_text(settings, api, caplog):
    settings.USER_MODELS = True
    upload = SimpleUploadedFile("broken.gguf", b"GGUF" + b"\xff" * 60)
    model_id = api.post("/api/v1/base-models/", {"source": "gguf", "file": upload}, format="multipart").json()["id"]
    leak = ValueError("tensor blk.0 at /srv/lora-studio/media/models/secret-7b/upload.gguf")
    with mock.patch("jobs.base_models.services.convert_gguf_limited", side_effect=leak):
        services.base_model_convert_gguf(model_id=model_id)
    model = BaseModel.objects.get(id=model_id)
    assert model.status == ModelStatus.FAILED
    assert model.error == "the GGUF file cannot be converted: its contents are not in a form this product can read"
    shown = api.get(f"/api/v1/base-models/{model_id}/").content.decode()
    assert "/srv/lora-studio" not in shown and "ValueError" not in shown
    assert "/srv/lora-studio" in caplog.text  # the details stay in the server's log


@pytest.mark.parametrize("content,message", [(b"PK\x03\x04zip", "not a GGUF file"), (b"GGUF" + b"\0" * 2000, "limit")])
def test_a_bad_gguf_upload_is_a_400_naming_the_file(settings, api, content, message):
    settings.USER_MODELS, settings.GGUF_MAX_BYTES = True, 1000
    response = api.post(
        "/api/v1/base-models/", {"source": "gguf", "file": SimpleUploadedFile("m.gguf", content)}, format="multipart"
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "file" and message in response.json()["error"]["message"]
    assert not BaseModel.objects.exists()


def test_the_models_page_lists_models_and_lets_staff_register_a_folder(client, staff, tiny_llama, settings):
    settings.OFFLINE = True
    client.force_login(staff)
    page = client.get("/models/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'href="/models/"' in html and "offline" in html and "app/base_models.js" in html
    response = client.post("/models/", {"source": "folder", "name": "tiny-page", "path": str(tiny_llama)})
    assert response.status_code == 302
    html = client.get("/models/").content.decode()
    assert "tiny-page" in html and "512 tokens" in html
    bad = client.post("/models/", {"source": "folder", "name": "again", "path": "/nowhere"})
    assert bad.status_code == 400 and "The folder /nowhere does not exist on the server" in bad.content.decode()
    assert 'name="path" maxlength="500" required autofocus aria-invalid="true"' in bad.content.decode()


def test_the_models_page_shows_progress_of_a_download(client_in, user, settings):
    settings.USER_MODELS = True
    assert "You can add models private to you" in client_in.get("/models/").content.decode()
    model = BaseModel.objects.create(
        name="org/big",
        path="",
        owner=user,
        source=ModelSource.HUB,
        status=ModelStatus.DOWNLOADING,
        bytes_total=1000,
        bytes_done=250,
    )
    html = client_in.get("/models/").content.decode()
    assert f'data-model-poll="/api/v1/base-models/{model.id}/"' in html and 'value="250"' in html
    assert "<script>" not in html  # CSP: scripts are static files only


def test_the_page_refuses_a_user_who_may_not_add_and_says_why(client_in, settings):
    settings.USER_MODELS = False
    html = client_in.get("/models/").content.decode()
    assert "Upload and convert" not in html and "<form" not in html.split("</section>", 1)[1]  # no forms to offer
    assert "A base model is the pretrained language model a fine-tuning job starts from" in html
    assert "Only staff add models on this server. To train on another model, ask your administrator" in html
    response = client_in.post("/models/", {"source": "hub", "hub_id": "org/tiny"})
    assert response.status_code == 403 and "USER_MODELS=1" in response.content.decode()
    assert not BaseModel.objects.exists()
