"""jobs.common.blobs against a real S3 endpoint (moto's server over HTTP): what one machine publishes, a machine
with an empty MEDIA_ROOT fetches; state reads come from the store; without STORAGE_URL nothing changes."""

import json
import shutil
from pathlib import Path

import pytest
import requests
from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation

from jobs.common import blobs
from tests.object_store import s3_client, stored_keys, upload_folder


def other_host(settings, tmp_path, name="host-2") -> Path:
    """Switch to a machine with an empty local folder (the same store)."""
    settings.MEDIA_ROOT = tmp_path / name / "media"
    return Path(settings.MEDIA_ROOT)


def write(root: Path, relative: str, data: bytes = b"x") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def publish(relative: str) -> None:
    """Publish what is already written locally under `relative` (the in-place form of blobs.writing)."""
    with blobs.writing(relative, in_place=True):
        pass


def test_published_files_and_folders_reach_a_machine_with_an_empty_disk(settings, object_store, s3_endpoint, tmp_path):
    root = Path(settings.MEDIA_ROOT)
    write(root, "datasets/a.jsonl", b'{"x": 1}\n')
    write(root, "jobs/j1/data/train.jsonl", b"train")
    write(root, "jobs/j1/data/eval.jsonl", b"eval")
    write(root, "jobs/j1/data/.partial.tmp", b"half")  # work in progress is never published
    publish("datasets/a.jsonl")
    publish("jobs/j1/data")
    assert stored_keys(s3_endpoint, object_store) == [
        "studio/datasets/a.jsonl",
        "studio/jobs/j1/data/eval.jsonl",
        "studio/jobs/j1/data/train.jsonl",
    ]

    fresh = other_host(settings, tmp_path)
    assert not fresh.exists()
    assert blobs.fetch("datasets/a.jsonl").read_bytes() == b'{"x": 1}\n'
    folder = blobs.fetch("jobs/j1/data")
    assert folder == (fresh / "jobs/j1/data").resolve()
    assert sorted(p.name for p in folder.iterdir()) == ["eval.jsonl", "train.jsonl"]
    assert (folder / "train.jsonl").read_bytes() == b"train"
    # Nothing stored under a name: the local path, absent.
    assert not blobs.fetch("jobs/j1/evaluation.json").exists()
    # The state reads come from the store, whichever machine asks.
    assert blobs.exists("jobs/j1/data") and blobs.is_file("datasets/a.jsonl") and not blobs.is_file("jobs/j1/data")
    assert blobs.size("jobs/j1/data/eval.jsonl") == 4 and blobs.size("nothing.zip") is None
    assert 0 <= blobs.age("datasets/a.jsonl") < 60 and blobs.age("nothing.zip") is None


def test_mirror_follows_pruned_checkpoints(settings, object_store, s3_endpoint):
    root = Path(settings.MEDIA_ROOT)
    for step in (10, 20):
        write(root, f"jobs/j/checkpoints/step-0000{step}/adapter_model.safetensors", b"w" * step)
    write(root, "jobs/j/checkpoints/.step-000030.tmp-abcd/adapter_model.safetensors", b"half")
    blobs.mirror("jobs/j/checkpoints")
    assert stored_keys(s3_endpoint, object_store) == [
        f"studio/jobs/j/checkpoints/step-0000{s}/adapter_model.safetensors" for s in (10, 20)
    ]
    write(root, "jobs/j/checkpoints/step-000030/adapter_model.safetensors", b"w" * 30)
    blobs.delete("jobs/j/checkpoints/step-000010")  # pruned here, and (already) in the store
    write(root, "jobs/j/checkpoints/step-000010/adapter_model.safetensors", b"w")  # a stray local copy again
    shutil.rmtree(root / "jobs/j/checkpoints/step-000020")  # pruned by the engine: the mirror removes it
    blobs.mirror("jobs/j/checkpoints")
    assert stored_keys(s3_endpoint, object_store) == [
        f"studio/jobs/j/checkpoints/step-0000{s}/adapter_model.safetensors" for s in (10, 30)
    ]
    blobs.delete("jobs/j/checkpoints")
    assert stored_keys(s3_endpoint, object_store) == [] and not (root / "jobs/j/checkpoints").exists()


def test_small_state_files_are_read_from_the_store(settings, object_store, tmp_path):
    blobs.write_text("jobs/j/merge.pending", json.dumps({"attempts": 1}))
    blobs.write_text("jobs/k/merge.pending", "{}")
    write(Path(settings.MEDIA_ROOT), "jobs/k/other.txt")
    publish("jobs/k/other.txt")
    other_host(settings, tmp_path)
    assert json.loads(blobs.read_text("jobs/j/merge.pending")) == {"attempts": 1}
    assert blobs.find("jobs", "merge.pending") == ["jobs/j/merge.pending", "jobs/k/merge.pending"]
    blobs.touch("jobs/j/merge.pending")  # a heartbeat from a machine without the local file
    blobs.delete("jobs/j/merge.pending")
    assert blobs.read_text("jobs/j/merge.pending") is None
    with pytest.raises(FileNotFoundError):
        blobs.touch("jobs/j/merge.pending")
    assert blobs.find("jobs", "merge.pending") == ["jobs/k/merge.pending"]


def test_names_that_leave_the_media_folder_are_refused(object_store):
    for call in (
        publish,
        blobs.fetch,
        blobs.delete,
        blobs.exists,
        blobs.is_file,
        blobs.size,
        blobs.age,
        blobs.read_text,
        blobs.touch,
        blobs.mirror,
    ):
        with pytest.raises(SuspiciousFileOperation):
            call("../outside")
    with pytest.raises(SuspiciousFileOperation):
        blobs.fetch("/etc/passwd")


@pytest.mark.django_db
def test_downloads_stream_from_the_store_or_redirect_to_a_signed_url(settings, object_store, client, tmp_path):
    from django.http import Http404

    write(Path(settings.MEDIA_ROOT), "jobs/j/adapter.zip", b"PK-zip-bytes")
    publish("jobs/j/adapter.zip")
    other_host(settings, tmp_path)
    response = blobs.download_response("jobs/j/adapter.zip", filename="my-adapter.zip", content_type="application/zip")
    assert response.status_code == 200 and response["Content-Length"] == "12"
    assert 'attachment; filename="my-adapter.zip"' in response["Content-Disposition"]
    assert b"".join(response.streaming_content) == b"PK-zip-bytes"
    assert not (Path(settings.MEDIA_ROOT) / "jobs/j/adapter.zip").exists()  # streamed, not cached
    with pytest.raises(Http404):
        blobs.download_response("jobs/j/gone.zip", filename="x.zip")

    settings.STORAGE_DOWNLOAD_REDIRECT = True
    settings.STORAGE_SIGNED_URL_SECONDS = 60
    response = blobs.download_response("jobs/j/adapter.zip", filename="my-adapter.zip", content_type="application/zip")
    assert response.status_code == 302 and "X-Amz-Expires=60" in response["Location"]
    got = requests.get(response["Location"], timeout=10)
    assert got.status_code == 200 and got.content == b"PK-zip-bytes"
    assert "my-adapter.zip" in got.headers["Content-Disposition"]
    with pytest.raises(Http404):
        blobs.download_response("jobs/j/gone.zip", filename="x.zip")


@pytest.mark.django_db
def test_a_base_model_registered_from_the_store_is_cached_once_per_machine(
    settings, object_store, s3_endpoint, tiny_llama, tmp_path
):
    from jobs.base_models.services import base_model_register

    url = f"s3://{object_store}/models/tiny-llama"
    upload_folder(s3_endpoint, tiny_llama, url)
    model = base_model_register(name="stored-llama", path=url)
    assert model.path == url and model.architecture and model.parameters > 0
    local = Path(model.local_path)
    assert local.is_relative_to(settings.MODEL_CACHE_DIR) and (local / "config.json").is_file()
    assert sorted(p.name for p in local.iterdir() if p.name != blobs.COMPLETE) == sorted(
        p.name for p in tiny_llama.iterdir()
    )
    # Once complete, the cached copy is used as it is: no listing, no download (the store could be away).
    blobs._models_ready.clear()
    before = (local / "model.safetensors").stat().st_mtime_ns
    client = s3_client(s3_endpoint)
    for key in stored_keys(s3_endpoint, object_store, "models/"):
        client.delete_object(Bucket=object_store, Key=key)
    assert model.local_path == str(local) and (local / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(FileNotFoundError):
        blobs.model_local_path(f"s3://{object_store}/models/nothing-here")
    with pytest.raises(ValueError):
        blobs.model_local_path(f"s3://{object_store}")


@pytest.mark.django_db
def test_register_model_command_takes_a_store_prefix(settings, object_store, s3_endpoint, tiny_llama):
    from django.core.management import call_command

    from jobs.base_models.models import BaseModel

    url = f"s3://{object_store}/models/llama-cmd"
    upload_folder(s3_endpoint, tiny_llama, url)
    call_command("register_model", "cmd-llama", url + "/")
    assert BaseModel.objects.get(name="cmd-llama").path == url


def test_without_storage_url_everything_stays_local(settings, tmp_path):
    settings.STORAGE_URL = ""
    root = Path(settings.MEDIA_ROOT)
    path = write(root, "jobs/j/adapter.zip", b"local")
    publish("jobs/j/adapter.zip")
    assert blobs.fetch("jobs/j/adapter.zip") == path.resolve()
    assert blobs.is_file("jobs/j/adapter.zip") and blobs.size("jobs/j/adapter.zip") == 5
    assert blobs.find("jobs", "adapter.zip") == ["jobs/j/adapter.zip"]
    response = blobs.download_response("jobs/j/adapter.zip", filename="a.zip")
    assert b"".join(response.streaming_content) == b"local"
    blobs.delete("jobs/j")
    assert not (root / "jobs/j").exists()
    assert blobs.model_local_path(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError, match="STORAGE_URL"):
        blobs.model_local_path("s3://bucket/models/x")


@pytest.mark.parametrize("url", ["http://bucket/prefix", "s3://", "s3:///prefix", "s3://bucket/p?x=1"])
def test_a_storage_url_that_is_not_s3_bucket_prefix_is_refused(url):
    from webapp.settings import _object_storage

    with pytest.raises(ImproperlyConfigured, match="STORAGE_URL"):
        _object_storage(url)


@pytest.mark.django_db
def test_a_dataset_uploaded_on_one_machine_is_read_and_deleted_on_another(
    settings, object_store, s3_endpoint, user, tmp_path, django_capture_on_commit_callbacks
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from jobs.datasets.selectors import dataset_examples
    from jobs.datasets.services import dataset_create, dataset_delete
    from tests.factories import chat_jsonl

    ds = dataset_create(owner=user, upload=SimpleUploadedFile("c.jsonl", chat_jsonl()), name="c")
    assert stored_keys(s3_endpoint, object_store) == sorted([f"studio/{ds.file}", f"studio/{ds.normalized_file}"])
    other_host(settings, tmp_path)
    assert len(dataset_examples(dataset=ds)) == ds.rows > 0
    with django_capture_on_commit_callbacks(execute=True):
        dataset_delete(dataset=ds)
    assert stored_keys(s3_endpoint, object_store) == []


def test_a_large_upload_is_checked_and_counted_on_another_machine(
    settings, object_store, s3_endpoint, user, base_model, tmp_path
):
    """The web host only stores a large upload; the background host, with an empty disk, checks it and
    counts its tokens through the store; the web host then reads the counts without tokenizing."""
    from unittest import mock

    from django.core.files.uploadedfile import SimpleUploadedFile

    from jobs.common import queue
    from jobs.datasets import selectors, token_profiles, uploads
    from jobs.datasets.models import TokenProfile
    from tests.factories import chat_jsonl

    settings.DATASET_CHECK_INLINE_BYTES = 10
    web_root = settings.MEDIA_ROOT
    with mock.patch.object(queue, "enqueue"):
        check = uploads.dataset_upload(owner=user, upload=SimpleUploadedFile("c.jsonl", chat_jsonl()))
        assert stored_keys(s3_endpoint, object_store) == [f"studio/{check.file}"]
        other_host(settings, tmp_path)  # the background worker's machine
        assert uploads.upload_check_run(check_id=check.id) == "ready"
        check.refresh_from_db()
        profile = TokenProfile.objects.get(dataset=check.dataset)
        assert token_profiles.token_profile_compute(profile_id=profile.id) == "ready"
    keys = stored_keys(s3_endpoint, object_store)
    assert f"studio/{check.file}" not in keys, "the parked upload is gone once it became the dataset"
    assert {f"studio/{check.dataset.file}", f"studio/{check.dataset.normalized_file}"} <= set(keys)
    settings.MEDIA_ROOT = web_root  # back on the web host, which never saw the counts
    profile.refresh_from_db()
    report = selectors.token_report_of(profile=profile, max_length=16)
    assert report is not None and len(report.lengths) == check.dataset.rows


def test_the_web_side_fetches_only_a_stored_models_tokenizer_not_its_weights(
    settings, object_store, s3_endpoint, tiny_llama
):
    from worker.modeling import TOKENIZER_FILES, tokenizer_fingerprint

    url = f"s3://{object_store}/models/tok-only"
    upload_folder(s3_endpoint, tiny_llama, url)
    local = Path(blobs.model_local_path(url, only=TOKENIZER_FILES))
    fetched = sorted(p.name for p in local.iterdir())
    assert fetched and set(fetched) <= set(TOKENIZER_FILES)
    assert not (local / "model.safetensors").exists() and not (local / blobs.COMPLETE).exists()
    assert tokenizer_fingerprint(str(local)) == tokenizer_fingerprint(str(tiny_llama))
    # A later full call (a worker loading the model) fetches the rest into the same folder.
    assert blobs.model_local_path(url) == str(local)
    assert (local / "model.safetensors").is_file() and (local / blobs.COMPLETE).is_file()


# --- blobs.writing: the one way to write --------------------------------------------------------------


class Boom(Exception):
    pass


def test_a_file_written_through_writing_reaches_a_machine_with_an_empty_disk(
    settings, object_store, s3_endpoint, tmp_path
):
    with blobs.writing("jobs/w/adapter.zip") as path:
        assert not (Path(settings.MEDIA_ROOT) / "jobs/w/adapter.zip").exists()  # nobody sees half of it
        path.write_bytes(b"zip")
    with blobs.writing("jobs/w/data") as folder:
        folder.mkdir()
        (folder / "train.jsonl").write_bytes(b"train")
    assert stored_keys(s3_endpoint, object_store) == ["studio/jobs/w/adapter.zip", "studio/jobs/w/data/train.jsonl"]
    other_host(settings, tmp_path)
    assert blobs.fetch("jobs/w/adapter.zip").read_bytes() == b"zip"
    assert (blobs.fetch("jobs/w/data") / "train.jsonl").read_bytes() == b"train"
    assert blobs.size("jobs/w/adapter.zip") == 3


def test_an_exception_inside_writing_publishes_nothing_and_leaves_nothing(settings, object_store, s3_endpoint):
    root = Path(settings.MEDIA_ROOT)
    with pytest.raises(Boom):
        with blobs.writing("jobs/w/adapter.zip") as path:
            path.write_bytes(b"half")
            raise Boom
    with pytest.raises(Boom):
        with blobs.writing("jobs/w/data") as folder:
            folder.mkdir()
            (folder / "train.jsonl").write_bytes(b"half")
            raise Boom
    assert stored_keys(s3_endpoint, object_store) == []
    assert not blobs.exists("jobs/w/adapter.zip") and not blobs.exists("jobs/w/data")
    assert list((root / "jobs/w").iterdir()) == []  # no partial output, not even a hidden one


def test_writing_in_place_publishes_the_engines_output_and_removes_only_what_it_made(
    settings, object_store, s3_endpoint
):
    root = Path(settings.MEDIA_ROOT)
    write(root, "jobs/e/adapter/adapter_model.safetensors", b"w")  # written in place by the engine
    with blobs.writing("jobs/e/adapter", in_place=True) as folder:
        assert folder == (root / "jobs/e/adapter").resolve()
        (folder / "README.md").write_text("card")
    assert stored_keys(s3_endpoint, object_store) == [
        "studio/jobs/e/adapter/README.md",
        "studio/jobs/e/adapter/adapter_model.safetensors",
    ]
    with pytest.raises(Boom):
        with blobs.writing("jobs/e/adapter", in_place=True):
            raise Boom
    assert (root / "jobs/e/adapter/adapter_model.safetensors").is_file()  # it was there before: kept
    with pytest.raises(Boom):
        with blobs.writing("jobs/e/new", in_place=True) as folder:
            folder.mkdir()
            raise Boom
    assert not (root / "jobs/e/new").exists() and not blobs.exists("jobs/e/new")


@pytest.mark.parametrize("stored", [False, True])
def test_writing_replaces_whole_and_an_empty_block_is_an_error(settings, tmp_path, request, stored):
    if stored:
        request.getfixturevalue("object_store")
    else:
        settings.STORAGE_URL = ""
    with blobs.writing("jobs/r/data") as folder:
        folder.mkdir()
        (folder / "old.jsonl").write_bytes(b"old")
    with blobs.writing("jobs/r/data") as folder:
        folder.mkdir()
        (folder / "new.jsonl").write_bytes(b"new")
        assert (Path(settings.MEDIA_ROOT) / "jobs/r/data/old.jsonl").is_file()  # the old one until the block ends
    assert sorted(p.name for p in (Path(settings.MEDIA_ROOT) / "jobs/r/data").iterdir()) == ["new.jsonl"]
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with blobs.writing("jobs/r/nothing"):
            pass
    assert not blobs.exists("jobs/r/nothing")
    with pytest.raises(SuspiciousFileOperation):
        with blobs.writing("../outside"):
            pass


def test_the_store_is_chosen_once_from_settings(settings, request):
    settings.STORAGE_URL = ""
    assert isinstance(blobs.store(), blobs.LocalStore) and blobs.store() is blobs.store() and not blobs.enabled()
    request.getfixturevalue("object_store")
    assert isinstance(blobs.store(), blobs.S3Store) and blobs.store() is blobs.store() and blobs.enabled()
    assert not hasattr(blobs, "publish"), "no caller publishes by hand: writing does"
