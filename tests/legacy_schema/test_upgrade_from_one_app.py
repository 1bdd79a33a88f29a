"""An installation made when every model lived in the one `jobs` app upgrades to the apps by domain
with nothing lost: the database is taken back to that schema (jobs 0005), filled the way that
release wrote rows and files, migrated forward, and every row, file and key is used again."""

import hashlib
import io
import json
import uuid
import zipfile

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from rest_framework.test import APIClient

from tests.factories import memorisable_conversations
from worker.data.loading import load_dataset_file
from worker.data.normalized import write_normalized_jsonl

ONE_APP_SCHEMA = ("jobs", "0005_chatanswer_stopped")
DOMAIN_APPS = ["accounts", "base_models", "user_datasets", "training", "arena", "webhooks"]
OLD_KEY = "ls-" + "k" * 43


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor


def fill_like_the_one_app_release(apps, media, tiny_llama) -> dict:
    """Rows as the one-app release wrote them (its historical models), and the files they name."""
    model = lambda name: apps.get_model("jobs", name)  # noqa: E731
    alice = apps.get_model("auth", "User").objects.create(username="alice", password="!")
    base = model("BaseModel").objects.create(
        name="tiny-llama",
        path=str(tiny_llama),
        architecture="LlamaForCausalLM",
        parameters=1000,
        linear_modules=["q_proj", "v_proj"],
        has_chat_template=True,
    )
    source = media / "datasets" / "abc.jsonl"
    source.parent.mkdir(parents=True)
    source.write_text("".join(json.dumps({"messages": m}) + "\n" for m in memorisable_conversations()))
    loaded = load_dataset_file(source)
    write_normalized_jsonl(loaded.examples, media / "datasets" / "abc.normalized.jsonl")
    dataset = model("Dataset").objects.create(
        owner=alice,
        name="colours",
        original_name="colours.jsonl",
        file="datasets/abc.jsonl",
        normalized_file="datasets/abc.normalized.jsonl",
        format="jsonl",
        schema="messages",
        rows=loaded.rows,
        size_bytes=source.stat().st_size,
        sha256=loaded.sha256,
        stats={},
    )
    job = model("FineTuneJob").objects.create(
        owner=alice,
        dataset=dataset,
        dataset_name="colours",
        base_model=base,
        name="colours run",
        config={"rank": 8, "qlora": False},
        status="succeeded",
        step=4,
        total_steps=4,
        final_loss=0.25,
    )
    for step, loss in ((2, 0.9), (4, 0.25)):
        model("MetricPoint").objects.create(job=job, step=step, train_loss=loss, lr=1e-3)
    model("JobEvent").objects.create(job=job, kind="setup", message="loaded the base model")
    adapter_zip = media / "jobs" / str(job.id) / "adapter.zip"
    adapter_zip.parent.mkdir(parents=True)
    with zipfile.ZipFile(adapter_zip, "w") as zf:
        zf.writestr("adapter_config.json", '{"r": 8}')
    model("Adapter").objects.create(
        job=job,
        folder=f"jobs/{job.id}/adapter",
        zip_file=f"jobs/{job.id}/adapter.zip",
        size_bytes=adapter_zip.stat().st_size,
        sha256="0" * 64,
    )
    merged_zip = media / "jobs" / str(job.id) / f"merged-{str(job.id)[:8]}.zip"  # that release's merged export
    merged_zip.write_bytes(b"PK-merged")
    session = model("ChatSession").objects.create(owner=alice, job=job)
    chat_round = model("ChatRound").objects.create(session=session, blind=True)
    for position, answer_job in enumerate((None, job)):
        model("ChatAnswer").objects.create(
            session=session,
            round=chat_round,
            job=answer_job,
            position=position,
            side="base" if answer_job is None else "adapter",
            prompt="colour 1",
            text=f"answer {position}",
            state="done",
        )
    model("Vote").objects.create(
        owner=alice, round=chat_round, base_model=base, first_job=None, second_job=job, result="second", blind=True
    )
    model("ApiKey").objects.create(
        owner=alice, name="laptop", prefix=OLD_KEY[:8], hashed=hashlib.sha256(OLD_KEY.encode()).hexdigest()
    )
    webhook = model("Webhook").objects.create(owner=alice, url="https://example.com/hook", secret="whsec_old")
    model("WebhookDelivery").objects.create(
        webhook=webhook,
        event="fine_tuning.job.succeeded",
        payload={"id": "msg_1"},
        delivered=True,
        status_code=200,
        attempts=1,
    )
    content_type = apps.get_model("contenttypes", "ContentType")
    job_type, _ = content_type.objects.get_or_create(app_label="jobs", model="finetunejob")
    return {
        "alice": alice.id,
        "dataset": dataset.id,
        "job": job.id,
        "session": session.id,
        "round": chat_round.id,
        "webhook": webhook.id,
        "job_type": job_type.id,
        "adapter_zip": adapter_zip.read_bytes(),
        "source": source.read_bytes(),
    }


@pytest.mark.django_db(transaction=True)
def test_the_one_app_schema_upgrades_with_every_row_file_and_key(settings, tmp_path, tiny_llama):
    settings.MEDIA_ROOT = tmp_path / "media"
    executor = migrate([ONE_APP_SCHEMA] + [(app, None) for app in DOMAIN_APPS])
    django_own = [node for node in executor.loader.graph.leaf_nodes() if node[0] not in DOMAIN_APPS + ["jobs"]]
    old = fill_like_the_one_app_release(
        executor.loader.project_state([ONE_APP_SCHEMA, *django_own]).apps, settings.MEDIA_ROOT, tiny_llama
    )

    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    from jobs.arena.models import ChatAnswer, ChatSession, Vote
    from jobs.training.models import FineTuneJob
    from jobs.webhooks.models import Webhook

    job = FineTuneJob.objects.get(id=old["job"])
    assert (job.status, job.final_loss, job.dataset_id, job.error_code) == ("succeeded", 0.25, old["dataset"], "")
    assert job.metrics.count() == 2 and job.events.get().kind == "setup" and job.adapter.size_bytes > 0
    assert ChatAnswer.objects.filter(session_id=old["session"]).count() == 2 and Vote.objects.get().result == "second"
    assert ChatSession.objects.get(id=old["session"]).job_id == job.id
    # The content type keeps its id (so permissions and admin history stay) under its new app.
    assert ContentType.objects.get_for_model(FineTuneJob).id == old["job_type"]
    assert not ContentType.objects.filter(app_label="jobs").exists()

    # The key made before the upgrade still signs requests in, and every file it reaches is served.
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {OLD_KEY}")
    assert [d["id"] for d in api.get("/api/v1/datasets/").json()] == [str(old["dataset"])]
    download = api.get(f"/api/v1/datasets/{old['dataset']}/download/")
    assert download.status_code == 200 and b"".join(download.streaming_content) == old["source"]
    adapter = api.get(f"/api/v1/jobs/{job.id}/adapter/")
    assert adapter.status_code == 200 and b"".join(adapter.streaming_content) == old["adapter_zip"]
    assert zipfile.ZipFile(io.BytesIO(old["adapter_zip"])).read("adapter_config.json") == b'{"r": 8}'
    # The merged export made before the upgrade is still ready, served, and counted in the storage used.
    assert api.post(f"/api/v1/jobs/{job.id}/merged/").json()["status"] == "ready"
    merged = api.get(f"/api/v1/jobs/{job.id}/merged/")
    assert merged.status_code == 200 and b"".join(merged.streaming_content) == b"PK-merged"
    assert job.exports.get(format="merged").size_bytes == len(b"PK-merged")
    assert [p["step"] for p in api.get(f"/api/v1/jobs/{job.id}/metrics/").json()] == [2, 4]
    listed = api.get(f"/api/v1/jobs/{job.id}/chat/?session={old['session']}").json()
    assert [a["text"] for a in listed] == ["answer 0", "answer 1"]
    [row] = api.get("/api/v1/win-rates/").json()
    assert (row["model"]["kind"], row["losses"], row["opponent"]["id"]) == ("base", 1, str(job.id))
    assert api.get(f"/v1/fine_tuning/jobs/ftjob-{uuid.UUID(str(job.id)).hex}").json()["status"] == "succeeded"
    [hook] = api.get("/api/v1/webhooks/").json()
    assert hook["url"] == "https://example.com/hook" and Webhook.objects.get().secret == "whsec_old"
    assert api.get(f"/api/v1/webhooks/{old['webhook']}/deliveries/").json()["results"][0]["status"] == "delivered"

    # The pages still render the old rows: an old dataset gets its tokens counted (the background task,
    # run here) from its normalised file, and the check page shows them.
    from django.contrib.auth import get_user_model
    from django.test import Client

    from tests.factories import count_tokens

    browser = Client()
    browser.force_login(get_user_model().objects.get(id=old["alice"]))
    check = browser.get(f"/datasets/{old['dataset']}/")
    assert check.status_code == 200 and check.context["profile"].status == "pending"
    assert count_tokens() == 1
    check = browser.get(f"/datasets/{old['dataset']}/")
    assert check.status_code == 200 and check.context["report"] is not None
    assert browser.get(f"/jobs/{job.id}/").status_code == 200
    assert browser.get(f"/jobs/{job.id}/compare/").status_code == 200
