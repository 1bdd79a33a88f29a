import csv
import io
import json
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from jobs.common.storage import media_path
from jobs.datasets import services as dataset_services
from jobs.datasets.models import Dataset
from jobs.training import services as job_services
from jobs.training.files import job_output_dir
from jobs.training.models import JobStatus
from jobs.training.plan import job_plan
from tests.conftest import memorisable_conversations
from tests.factories import count_tokens
from worker.config import TrainConfig
from worker.data.normalized import read_normalized_jsonl


def csv_bytes(header, rows) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


@pytest.fixture
def dataset(user, chat_file):
    return dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("chat.jsonl", chat_file.read_bytes()))


def test_upload_other_schemas_and_formats(client_in, user):
    rows = [(f"q{i}", f"a{i}") for i in range(5)]
    response = client_in.post(
        "/datasets/", {"file": SimpleUploadedFile("pc.csv", csv_bytes(["prompt", "completion"], rows))}
    )
    assert response.status_code == 302
    ds = Dataset.objects.get(owner=user)
    assert (ds.format, ds.schema, ds.rows) == ("csv", "prompt_completion", 5)
    examples = read_normalized_jsonl(media_path(ds.normalized_file))
    assert examples[0].messages == [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}]


def test_unknown_columns_are_mapped_in_the_ui(client_in, user, settings):
    rows = [(f"question {i}", f"answer {i}") for i in range(4)]
    response = client_in.post("/datasets/", {"file": SimpleUploadedFile("odd.csv", csv_bytes(["ask", "reply"], rows))})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="mapping-form"' in html and '<option value="ask">ask</option>' in html
    assert Dataset.objects.count() == 0
    token = html.split('name="token" value="')[1].split('"')[0]
    post = {"token": token, "filename": "odd.csv", "columns": ["ask", "reply"], "prompt": "ask", "response": "nope"}
    response = client_in.post("/datasets/map/", post)
    assert response.status_code == 400 and Dataset.objects.count() == 0
    response = client_in.post("/datasets/map/", {**post, "response": "reply", "name": "mapped"})
    assert response.status_code == 302
    ds = Dataset.objects.get(owner=user)
    assert ds.schema == "mapped" and ds.mapping == {"prompt": "ask", "response": "reply"} and ds.rows == 4
    assert not list((settings.MEDIA_ROOT / "datasets/pending").iterdir())


def test_unknown_columns_over_the_api(user, other_user):
    api = APIClient()
    api.force_authenticate(user)
    data = csv_bytes(["ask", "reply"], [("a", "b"), ("c", "d")])
    response = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("odd.csv", data)}, format="multipart")
    assert response.status_code == 422
    err = response.json()["error"]
    assert err["columns"] == ["ask", "reply"] and err["field"] == "mapping"
    # Another user cannot finish someone else's upload.
    other = APIClient()
    other.force_authenticate(other_user)
    body = {
        "upload_token": err["upload_token"],
        "filename": "odd.csv",
        "mapping": {"prompt": "ask", "response": "reply"},
    }
    assert other.post("/api/v1/datasets/map/", body, format="json").status_code == 400
    response = api.post("/api/v1/datasets/map/", body, format="json")
    assert response.status_code == 201 and response.json()["rows"] == 2


def test_rename_delete_download(client_in, user, dataset, base_model, settings):
    assert client_in.post(f"/datasets/{dataset.id}/rename/", {"name": "colours v2"}).status_code == 302
    dataset.refresh_from_db()
    assert dataset.name == "colours v2"
    response = client_in.get(f"/datasets/{dataset.id}/download/")
    assert response["Content-Disposition"] == 'attachment; filename="chat.jsonl"'
    assert b"".join(response.streaming_content).startswith(b'{"messages"')

    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig())
        )
    response = client_in.post(f"/datasets/{dataset.id}/delete/", follow=True)
    assert "is used by unfinished job(s)" in response.content.decode()
    assert Dataset.objects.filter(id=dataset.id).exists()

    job_services.job_cancel(job=job, by=user)
    files = [settings.MEDIA_ROOT / dataset.file, settings.MEDIA_ROOT / dataset.normalized_file]
    assert all(f.exists() for f in files)
    with mock.patch("django.db.transaction.on_commit", side_effect=lambda fn: fn()):
        assert client_in.post(f"/datasets/{dataset.id}/delete/").status_code == 302
    assert not Dataset.objects.filter(id=dataset.id).exists() and not any(f.exists() for f in files)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.dataset is None and job.dataset_name == "colours v2"
    assert client_in.get(f"/jobs/{job.id}/").status_code == 200


def test_check_page_shows_histogram_and_trained_tokens(client_in, dataset, base_model):
    # The page never tokenizes: it asks a background worker to count, once, and follows the count.
    waiting = client_in.get(f"/datasets/{dataset.id}/?max_length=20").content.decode()
    assert "Counting tokens: 0 of 8 examples" in waiting and 'data-poll-url="/datasets/' in waiting
    assert 'id="histogram-data"' not in waiting
    assert count_tokens() == 1
    response = client_in.get(f"/datasets/{dataset.id}/?max_length=20")
    assert response.status_code == 200
    html = response.content.decode()
    histogram = json.loads(html.split('id="histogram-data" type="application/json">')[1].split("</script>")[0])
    assert sum(histogram["counts"]) == 8
    assert "would be truncated" in html and 'data-truncated="8"' in html
    assert '<span class="tok trained">{&quot;answer&quot;: &quot;red&quot;}' in html
    assert '<span class="tok masked">&lt;|im_start|&gt;user\ncolour 0' in html


def test_validation_split_is_stored_with_the_job(user, dataset, base_model, settings):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(
                owner=user,
                dataset=dataset,
                base_model=base_model,
                config=TrainConfig(),
                validation="split",
                validation_percent=25,
                validation_seed=7,
            )
        )
    assert job.validation == {"kind": "split", "percent": 25, "seed": 7, "train_rows": 6, "eval_rows": 2}
    folder = job_output_dir(job) / "data"
    train = [e.to_json() for e in read_normalized_jsonl(folder / "train.jsonl")]
    valid = [e.to_json() for e in read_normalized_jsonl(folder / "eval.jsonl")]
    assert len(train) == 6 and len(valid) == 2
    everything = [{"messages": m} for m in memorisable_conversations()]
    assert sorted(map(json.dumps, train + valid)) == sorted(map(json.dumps, everything))
    with mock.patch("jobs.training.tasks.job_run.delay"):
        again = job_services.job_create(
            plan=job_plan(
                owner=user,
                dataset=dataset,
                base_model=base_model,
                config=TrainConfig(),
                validation="split",
                validation_percent=25,
                validation_seed=7,
            )
        )
    again_valid = [e.to_json() for e in read_normalized_jsonl(job_output_dir(again) / "data/eval.jsonl")]
    assert again_valid == valid, "same seed, same split"


def test_other_users_cannot_see_datasets(client, other_user, dataset):
    client.force_login(other_user)
    for url in (f"/datasets/{dataset.id}/", f"/datasets/{dataset.id}/download/"):
        assert client.get(url).status_code == 404
    assert client.post(f"/datasets/{dataset.id}/delete/").status_code == 404
    api = APIClient()
    api.force_authenticate(other_user)
    assert api.get(f"/api/v1/datasets/{dataset.id}/").status_code == 404
    assert api.delete(f"/api/v1/datasets/{dataset.id}/").status_code == 404
    assert Dataset.objects.filter(id=dataset.id).exists()
