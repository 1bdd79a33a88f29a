"""POST /v1/files with a file over DATASET_CHECK_INLINE_BYTES: stored and answered at once (status uploaded),
never parsed during the request; the background check (its task body run here) makes it processed under the
same id, or error with the reasons. A file still being checked cannot be trained on yet."""

from __future__ import annotations

import json
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.common import queue
from jobs.datasets import intake, uploads
from jobs.datasets.models import Dataset, UploadCheck
from tests.factories import chat_jsonl
from tests.openai_compat.test_openai_files_jobs import assert_error


@pytest.fixture
def large(settings):
    settings.DATASET_CHECK_INLINE_BYTES = 64  # every test file is "large"


@pytest.fixture
def sent():
    calls = []
    with mock.patch.object(queue, "enqueue", side_effect=lambda name, *args, robust=False: calls.append((name, *args))):
        yield calls


def upload(api, data: bytes, name="big.jsonl"):
    with mock.patch.object(intake, "load_dataset_file_limited", side_effect=AssertionError("parsed in the request")):
        return api.post(
            "/v1/files", {"file": SimpleUploadedFile(name, data), "purpose": "fine-tune"}, format="multipart"
        )


def test_a_large_file_is_answered_at_once_and_processed_by_the_background_check(api, user, base_model, large, sent):
    response = upload(api, chat_jsonl())
    assert response.status_code == 200, response.content
    f = response.json()
    assert f["status"] == "uploaded" and f["bytes"] == len(chat_jsonl()) and f["filename"] == "big.jsonl"
    assert not Dataset.objects.exists()
    check = UploadCheck.objects.get(owner=user)
    assert f["id"] == f"file-{check.id.hex}" and sent == [(queue.CHECK_UPLOAD, str(check.id))]
    assert api.get(f"/v1/files/{f['id']}").json() == f
    assert [x["id"] for x in api.get("/v1/files").json()["data"]] == [f["id"]]
    with mock.patch("jobs.training.tasks.job_run.delay"):
        early = api.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": f["id"]}, format="json")
    assert "still being processed" in assert_error(early, 400, param="training_file", code="file_not_ready")["message"]

    assert uploads.upload_check_run(check_id=check.id) == UploadCheck.Status.READY
    done = api.get(f"/v1/files/{f['id']}").json()
    assert done["id"] == f["id"] and done["status"] == "processed" and done["bytes"] == f["bytes"]
    assert [x["id"] for x in api.get("/v1/files").json()["data"]] == [f["id"]]
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = api.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": f["id"]}, format="json")
    assert job.status_code == 200, job.content


def test_a_refused_large_file_shows_error_with_its_reasons_and_can_be_deleted(api, user, large, sent):
    bad = chat_jsonl() + b'{"messages": [}\n'
    f = upload(api, bad).json()
    assert uploads.upload_check_run(check_id=UploadCheck.objects.get().id) == UploadCheck.Status.FAILED
    shown = api.get(f"/v1/files/{f['id']}").json()
    assert shown["status"] == "error" and "big.jsonl" in shown["status_details"] and "line" in shown["status_details"]
    assert api.delete(f"/v1/files/{f['id']}").json() == {"id": f["id"], "object": "file", "deleted": True}
    assert_error(api.get(f"/v1/files/{f['id']}"), 404, code="file_not_found")
    assert not UploadCheck.objects.exists()


def test_a_check_lost_after_storing_its_dataset_finishes_with_it(api, user, large, sent):
    f = upload(api, chat_jsonl()).json()
    check = UploadCheck.objects.get()
    uploads.upload_check_run(check_id=check.id)
    # The worker died before it recorded the end: the sweep queues the check again.
    UploadCheck.objects.filter(id=check.id).update(status=UploadCheck.Status.QUEUED, dataset=None)
    assert uploads.upload_check_run(check_id=check.id) == UploadCheck.Status.READY
    assert Dataset.objects.get().id.hex == f["id"].removeprefix("file-")
    assert json.loads(api.get(f"/v1/files/{f['id']}").content)["status"] == "processed"
