"""Publishing a job to the Hugging Face Hub (`POST /api/v1/jobs/<id>/publish/`), against the local stand-in
that speaks the Hub's upload API (tests/base_models/hub_server.py): the 400s naming the field, 409 until the
export to publish is ready, 404 for another owner's job, the upload end to end through huggingface_hub (the
files and the model card that reached the "Hub", the token in the Authorization header), the token nowhere
after the upload (database, Redis, answers), and the outbound rules refusing an inside Hub address."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from unittest import mock

import pytest
from django.core.management import call_command
from django.utils import timezone

from jobs.common import blobs
from jobs.training import publish
from jobs.training.files import export_zip_name
from jobs.training.models import Adapter, JobExport, JobPublish
from tests.base_models.hub_server import hub_handler
from tests.local_http import local_http_server
from tests.training.test_exports import succeeded_job
from worker.export import build_adapter_zip, model_card

pytestmark = pytest.mark.django_db
TOKEN = "hf_TopSecretToken4Publish"


@pytest.fixture(scope="module")
def hub_server():
    handler = hub_handler({})
    with local_http_server(handler) as url:
        handler.url = url
        yield handler


@pytest.fixture
def hub(settings, hub_server, real_redis):
    """The stand-in Hub, allowed by the admin's list (it listens on 127.0.0.1), with fresh records."""
    hub_server.log, hub_server.created, hub_server.commits = [], [], []
    settings.HF_ENDPOINT = hub_server.url
    settings.OFFLINE = False
    settings.HUB_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.HUB_ALLOWED_PORTS = [(1, 65535)]
    return hub_server


@pytest.fixture
def job(user, dataset, base_model, tiny_llama):
    """A succeeded job with a real adapter zip and model card, as adapter_create leaves them."""
    job = succeeded_job(user, dataset, base_model, tiny_llama)
    folder = blobs.fetch(job.adapter.folder)
    card = model_card(
        title="Colours",
        base_model=job.base_model.name,
        config={"rank": 4, "learning_rate": 0.0002},
        rows=12,
        dataset_sha256=job.dataset_sha256,
        steps=3,
        final_loss=1.25,
        targets=["q_proj", "v_proj"],
        serving_md="## Serving it\n\nvllm serve ./adapter\n",
    )
    (folder / "README.md").write_text(card)
    zip_name = f"jobs/{job.id}/adapter-{job.short_id}.zip"
    with blobs.writing(zip_name) as tmp:
        build_adapter_zip(folder, tmp, card=card, config={"rank": 4}, metrics=[], dataset_sha256=job.dataset_sha256)
    Adapter.objects.filter(job=job).update(zip_file=zip_name)
    job.refresh_from_db()
    return job


@pytest.fixture
def post(django_capture_on_commit_callbacks):
    def post(api, job, body):
        with mock.patch("jobs.common.queue.send") as send, django_capture_on_commit_callbacks(execute=True):
            response = api.post(f"/api/v1/jobs/{job.id}/publish/", body, format="json")
        return response, send

    return post


def test_publish_refuses_in_words(api, api_bob, job, hub, settings, post):
    url = f"/api/v1/jobs/{job.id}/publish/"
    cases = [
        ({"repo_id": "me/x"}, 400, "token"),
        ({"repo_id": "no-namespace", "token": TOKEN}, 400, "repo_id"),
        ({"repo_id": "me/../x", "token": TOKEN}, 400, "repo_id"),
        ({"repo_id": "me/x", "token": TOKEN, "what": "pickle"}, 400, "what"),
        ({"repo_id": "me/x", "token": TOKEN, "what": "gguf-lora"}, 409, "what"),
    ]
    for body, code, field in cases:
        response, send = post(api, job, body)
        assert response.status_code == code, (body, response.json())
        assert field in str(response.json()), response.json()
        assert TOKEN not in response.content.decode() and not send.called
    assert "export it first" in str(post(api, job, cases[-1][0])[0].json())
    assert api_bob.post(url, {"repo_id": "bob/x", "token": TOKEN}, format="json").status_code == 404
    assert api_bob.get(url).status_code == 404
    settings.HUB_ALLOWED_HOSTS = []  # the stand-in listens on 127.0.0.1: an inside address, not allowed now
    response, send = post(api, job, {"repo_id": "me/x", "token": TOKEN})
    assert response.status_code == 400 and "HUB_ALLOWED_HOSTS" in str(response.json()) and not send.called
    assert not JobPublish.objects.exists() and not hub.log


def test_publish_pushes_the_adapter_with_its_card_and_forgets_the_token(api, client, job, hub, real_redis, post):
    response, send = post(api, job, {"repo_id": "me/colours-lora", "token": TOKEN})
    assert response.status_code == 202, response.json()
    made = response.json()
    assert (made["status"], made["private"], made["what"], made["url"]) == ("pending", True, "adapter", None)
    send.assert_called_once_with("training.hub_publish", made["id"])
    assert real_redis.ttl(f"hub-publish-token:{made['id']}") > 0  # waiting for the upload, with an expiry

    assert publish.publish_run(made["id"]) == "done", JobPublish.objects.get(id=made["id"]).error
    assert hub.created == [{"name": "colours-lora", "organization": "me", "visibility": "private"}]
    assert {auth for _, _, auth in hub.log} == {f"Bearer {TOKEN}"}
    (commit,) = hub.commits
    files = commit["files"]
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "dataset.sha256"} <= set(files)
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: peft\nbase_model: tiny-llama\n")
    assert job.dataset_sha256 in card and "| learning_rate | 0.0002 |" in card and "1.2500" in card
    assert 'PeftModel.from_pretrained(base, "me/colours-lora")' in card
    assert "--lora-modules colours=me/colours-lora" in card or "=me/colours-lora" in card
    assert "ollama create" in card and "llama-cli" in card and "./adapter" not in card

    listed = api.get(f"/api/v1/jobs/{job.id}/publish/")
    assert listed.json()[0]["status"] == "done" and listed.json()[0]["url"] == f"{hub.url}/me/colours-lora"
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    assert TOKEN not in dump.getvalue() and TOKEN not in listed.content.decode() + response.content.decode()
    assert not real_redis.keys("hub-publish-token:*")
    assert publish.publish_run(made["id"]) == "skipped"  # a redelivered message pushes nothing twice

    client.force_login(job.owner)  # the job page: the form (token as a password), the push and its link
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="publish-form"' in page and 'type="password"' in page and "not kept" in page
    assert f'href="{hub.url}/me/colours-lora"' in page and TOKEN not in page and "app/publish.js" in page


def test_publish_a_gguf_export_and_the_guard_at_upload_time(api, job, hub, settings, post):
    export = JobExport.objects.create(job=job, format="gguf-lora", status=JobExport.Status.READY)
    with blobs.writing(export_zip_name(export)) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr("adapter.gguf", b"GGUF-lora")
        zf.writestr("Modelfile", "FROM ./model.gguf\nADAPTER ./adapter.gguf\n")
    response, _ = post(api, job, {"repo_id": "me/colours-gguf", "token": TOKEN, "what": "gguf-lora", "private": False})
    assert response.status_code == 202, response.json()
    assert publish.publish_run(response.json()["id"]) == "done"
    assert hub.created[-1]["visibility"] == "public"
    files = hub.commits[-1]["files"]
    assert files["adapter.gguf"] == b"GGUF-lora" and "ADAPTER" in files["Modelfile"].decode()
    card = files["README.md"].decode()
    assert "- gguf" in card and "ollama run hf.co/me/colours-gguf" in card and "GGUF LoRA" in card

    hub.refused_tokens = {"hf_Revoked"}  # the Hub refuses a token: the push fails in words
    response, _ = post(api, job, {"repo_id": "me/revoked", "token": "hf_Revoked"})
    assert publish.publish_run(response.json()["id"]) == "failed"
    assert JobPublish.objects.get(id=response.json()["id"]).error.startswith("the Hub refused the token (401)")
    hub.refused_tokens = set()

    # Allowed when asked, refused when the upload connects: every connection is checked as it is made.
    response, _ = post(api, job, {"repo_id": "me/again", "token": TOKEN})
    hub.log.clear()
    settings.HUB_ALLOWED_HOSTS = []
    assert publish.publish_run(response.json()["id"]) == "failed"
    row = JobPublish.objects.get(id=response.json()["id"])
    assert row.error == "the Hub could not be reached: refused: loopback address" and not hub.log
    assert TOKEN not in row.error

    JobPublish.objects.filter(id=row.id).update(status="pending")  # a push whose message was lost long ago
    JobPublish.objects.update(created=timezone.now() - dt.timedelta(hours=2))
    assert publish.publishes_stale_fail() == 1
    assert "publish again" in JobPublish.objects.get(id=row.id).error
