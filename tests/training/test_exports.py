"""A job's exports over REST and on the background worker: GGUF LoRA and merged GGUF asked for with
`POST /api/v1/jobs/<id>/exports/` (400s naming the field, 404 for another owner's job, the same export when asked
twice), listed with the merged export; the task end to end with the tiny model (the zip's GGUF files read back
with gguf.GGUFReader, the Modelfile), the base GGUF made once per base model, and a refused export failing in
plain words."""

from __future__ import annotations

import io
import zipfile
from unittest import mock

import pytest

from jobs.common.storage import media_path, media_relative
from jobs.training import export_tasks
from jobs.training import services as job_services
from jobs.training.models import Adapter, FineTuneJob, JobExport, JobStatus
from jobs.training.plan import job_plan
from tests.tiny_model import build_random_adapter
from worker.config import TrainConfig

gguf = pytest.importorskip("gguf")


def succeeded_job(owner, dataset, base_model, tiny_llama, *, seed=0):
    """A succeeded job whose adapter is a real (random) LoRA of the tiny Llama."""
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=owner, dataset=dataset, base_model=base_model, config=TrainConfig())
        )
    folder = media_path(f"jobs/{job.id}/adapter")
    build_random_adapter(tiny_llama, folder, seed=seed)
    Adapter.objects.create(job=job, folder=media_relative(folder), zip_file="x.zip", size_bytes=1, sha256="0" * 64)
    FineTuneJob.objects.filter(id=job.id).update(status=JobStatus.SUCCEEDED)
    return FineTuneJob.objects.get(id=job.id)


@pytest.fixture
def job(user, dataset, base_model, tiny_llama):
    return succeeded_job(user, dataset, base_model, tiny_llama)


def ask(api, job, body, capture=None):
    with mock.patch("jobs.training.export_tasks.adapter_merge.delay") as delay:
        if capture is None:
            response = api.post(f"/api/v1/jobs/{job.id}/exports/", body, format="json")
        else:
            with capture(execute=True):
                response = api.post(f"/api/v1/jobs/{job.id}/exports/", body, format="json")
    return response, delay


def zip_names(api, url):
    data = b"".join(api.get(url).streaming_content)
    return zipfile.ZipFile(io.BytesIO(data))


def test_exports_over_rest_refuse_in_words_and_are_idempotent(api, api_bob, job, django_capture_on_commit_callbacks):
    response, delay = ask(api, job, {"format": "gguf-lora"}, django_capture_on_commit_callbacks)
    assert response.status_code == 202, response.json()
    made = response.json()
    assert (made["format"], made["quantization"], made["status"], made["download"]) == (
        "gguf-lora",
        None,
        "pending",
        None,
    )
    delay.assert_called_once_with(str(job.id), made["id"])
    again, delay = ask(api, job, {"format": "gguf-lora"}, django_capture_on_commit_callbacks)
    assert again.status_code == 202 and again.json()["id"] == made["id"] and not delay.called  # the same, not queued
    q8, _ = ask(api, job, {"format": "gguf-merged", "quantization": "q8_0"})
    assert q8.status_code == 202 and q8.json()["quantization"] == "q8_0" and q8.json()["id"] != made["id"]
    listed = api.get(f"/api/v1/jobs/{job.id}/exports/").json()
    assert [(e["format"], e["quantization"], e["status"]) for e in listed] == [
        ("gguf-lora", None, "pending"),
        ("gguf-merged", "q8_0", "pending"),
    ]
    assert {"id", "progress", "created_at", "error", "download"} <= set(listed[0])

    for body, field in [
        ({"format": "gguf"}, "format"),
        ({"format": "gguf-merged", "quantization": "q2"}, "quantization"),
        ({"format": "gguf-lora", "quantization": "q8_0"}, "quantization"),
        ({}, "format"),
    ]:
        refused, _ = ask(api, job, body)
        assert refused.status_code == 400 and field in str(refused.json()), (body, refused.json())
    with mock.patch("worker.gguf_export.quantization_available", return_value=False):
        refused, _ = ask(api, job, {"format": "gguf-merged", "quantization": "q4_k_m"})
    assert refused.status_code == 400 and "q4_k_m is not available on this server" in str(refused.json())

    # Another user's job does not exist for them, nor do its exports.
    assert api_bob.get(f"/api/v1/jobs/{job.id}/exports/").status_code == 404
    assert api_bob.post(f"/api/v1/jobs/{job.id}/exports/", {"format": "gguf-lora"}, format="json").status_code == 404
    assert api_bob.get(f"/api/v1/jobs/{job.id}/exports/{made['id']}/download/").status_code == 404
    assert api.get(f"/api/v1/jobs/{job.id}/exports/{made['id']}/download/").status_code == 404  # not ready yet


def test_gguf_exports_end_to_end_reuse_the_base_gguf(api, user, dataset, base_model, tiny_llama, job):
    from worker import gguf_export

    (lora, _), (q8, _) = (
        ask(api, job, {"format": "gguf-lora"}),
        ask(api, job, {"format": "gguf-merged", "quantization": "q8_0"}),
    )
    with mock.patch.object(gguf_export, "model_to_gguf", wraps=gguf_export.model_to_gguf) as convert:
        assert export_tasks.adapter_merge(str(job.id), lora.json()["id"]) == "ready"
        assert convert.call_count == 1  # the base, made now
        assert export_tasks.adapter_merge(str(job.id), q8.json()["id"]) == "ready"
        # A second job on the same base: its GGUF LoRA export reuses the base GGUF the first one made.
        other = succeeded_job(user, dataset, base_model, tiny_llama, seed=1)
        (again, _) = ask(api, other, {"format": "gguf-lora"})
        convert.reset_mock()
        assert export_tasks.adapter_merge(str(other.id), again.json()["id"]) == "ready"
        convert.assert_not_called()

    listed = {e["format"]: e for e in api.get(f"/api/v1/jobs/{job.id}/exports/").json()}
    ready, delay = ask(api, job, {"format": "gguf-lora"})  # asked again once ready: the same one, nothing queued
    assert ready.status_code == 200 and ready.json() == listed["gguf-lora"] and not delay.called
    assert listed["gguf-lora"]["status"] == "ready" and listed["gguf-lora"]["progress"] == 1.0
    with zip_names(api, listed["gguf-lora"]["download"]) as zf:
        assert sorted(zf.namelist()) == ["Modelfile", "adapter.gguf", "model.gguf"]
        modelfile = zf.read("Modelfile").decode()
        assert "FROM ./model.gguf" in modelfile and "ADAPTER ./adapter.gguf" in modelfile
        folder = media_path(f"jobs/{job.id}/unzipped")
        zf.extractall(folder)
    adapter = gguf.GGUFReader(str(folder / "adapter.gguf"))
    assert adapter.fields["adapter.type"].contents() == "lora"
    assert any(t.name.endswith(".lora_a") for t in adapter.tensors)
    model = gguf.GGUFReader(str(folder / "model.gguf"))
    assert model.fields["general.architecture"].contents() == "llama" and len(model.tensors) > 0
    with zip_names(api, listed["gguf-merged"]["download"]) as zf:
        assert sorted(zf.namelist()) == ["Modelfile", "model.gguf"]
        zf.extract("model.gguf", folder / "q8")
    merged = gguf.GGUFReader(str(folder / "q8" / "model.gguf"))
    assert any(t.tensor_type == gguf.GGMLQuantizationType.Q8_0 for t in merged.tensors)
    with zip_names(api, api.get(f"/api/v1/jobs/{other.id}/exports/").json()[0]["download"]) as zf:
        assert sorted(zf.namelist()) == ["Modelfile", "adapter.gguf", "model.gguf"]
    assert job.events.filter(kind="export", message__startswith="GGUF LoRA export ready").exists()


def test_a_refused_export_shows_failed_with_a_plain_reason(api, job, settings):
    made, _ = ask(api, job, {"format": "gguf-merged", "quantization": "f16"})
    settings.MERGE_MEMORY_BUDGET_MB = 0
    assert export_tasks.adapter_merge(str(job.id), made.json()["id"]) == "refused"
    (row,) = api.get(f"/api/v1/jobs/{job.id}/exports/").json()
    assert row["status"] == "failed" and row["download"] is None
    assert row["error"].startswith("merged GGUF export (f16) refused: it needs about ")
    assert "more than MERGE_MEMORY_BUDGET_MB (0 MB)" in row["error"]
    # Asked again, it is queued afresh.
    again, _ = ask(api, job, {"format": "gguf-merged", "quantization": "f16"})
    assert again.status_code == 202 and again.json()["status"] == "pending" and again.json()["id"] == row["id"]
    assert JobExport.objects.get(id=row["id"]).attempts == 0


def test_the_merged_export_is_listed_beside_the_gguf_ones(api, job):
    with mock.patch("jobs.training.export_tasks.adapter_merge.delay"):
        assert api.post(f"/api/v1/jobs/{job.id}/merged/").status_code == 202
    (row,) = api.get(f"/api/v1/jobs/{job.id}/exports/").json()
    assert (row["format"], row["quantization"], row["status"]) == ("merged", None, "pending")
    JobExport.objects.filter(id=row["id"]).update(status="ready")
    (row,) = api.get(f"/api/v1/jobs/{job.id}/exports/").json()
    assert row["download"] == f"/api/v1/jobs/{job.id}/merged/"
