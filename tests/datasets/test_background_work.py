"""Work that depends only on the data runs once, off the web process: token counts per (dataset,
tokenizer) and the check of a large upload, both by the background worker (its task bodies are run
here directly; tests/integration/test_background_queue.py runs them on a real worker)."""

import json
import shutil
from datetime import timedelta
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from jobs.base_models.services import base_model_register
from jobs.common import queue
from jobs.datasets import services, token_profiles, uploads
from jobs.datasets.models import Dataset, TokenProfile, UploadCheck
from tests.conftest import memorisable_conversations
from tests.factories import count_tokens
from worker.data.examples import Example
from worker.data.report import TokenProfile as TokenCounts
from worker.data.report import token_profile
from worker.data.sandbox import load_dataset_file_limited
from worker.data.tokenization import tokenize_example
from worker.modeling import load_tokenizer, tokenizer_fingerprint


@pytest.fixture
def sent():
    """The tasks the services hand to Celery, by name (nothing is sent)."""
    calls = []
    with mock.patch.object(queue, "enqueue", side_effect=lambda name, *args, robust=False: calls.append((name, *args))):
        yield calls


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# --- token counts ------------------------------------------------------------------------------


def test_one_count_answers_every_max_length_exactly_as_truncating_would(tiny_llama):
    tokenizer = load_tokenizer(str(tiny_llama))
    examples = [Example(messages=m, source=i + 1) for i, m in enumerate(memorisable_conversations(6))]
    examples += [Example(text="plain text trained on every token " * 3, source=7)]
    counts = token_profile(tokenizer, examples)
    again = TokenCounts.from_json(json.loads(json.dumps(counts.to_json())))  # as stored
    for max_length in (1, 5, 12, 20, 33, 4096):
        # The oracle: tokenize each example truncated at this max length, as the engine does.
        cut = [tokenize_example(tokenizer, ex, max_length) for ex in examples]
        report = again.report(max_length)
        assert report.trained_tokens == sum(c.trained_tokens for c in cut), max_length
        assert report.truncated == sum(1 for n in report.lengths if n > max_length)
        whole = [tokenize_example(tokenizer, ex, 10**9) for ex in examples]
        assert report.emptied == sum(1 for c, w in zip(cut, whole) if w.trained_tokens and not c.trained_tokens)
        assert report.lengths == [len(tokenize_example(tokenizer, ex, 10**9).input_ids) for ex in examples]
    assert again.samples == counts.samples and any(trained for _, trained in counts.samples[0])


@pytest.fixture
def count_later(settings):
    """Datasets over DATASET_CHECK_INLINE_BYTES: still checked during dataset_create, their tokens counted later."""
    settings.DATASET_CHECK_INLINE_BYTES = 10


def test_right_after_a_small_upload_the_estimate_knows_the_lengths(api, client_in, user, base_model, sent):
    """A dataset small enough to check during the upload has its token profile by the time the upload answers
    (the estimate once said 3,694 MB for a job that then peaked at 1,915 MB while the count ran behind)."""
    data = jsonl({"messages": m} for m in memorisable_conversations(4))
    uploaded = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("c.jsonl", data)}, format="multipart")
    assert uploaded.status_code == 201, uploaded.content
    ds_id = uploaded.json()["id"]
    assert TokenProfile.objects.get(dataset_id=ds_id).status == "ready" and sent == [], "counted, nothing queued"
    body = {"dataset": ds_id, "base_model": str(base_model.id), "config": {"max_seq_length": 64}}
    assert api.post("/api/v1/estimate/", body, format="json").json()["lengths_known"] is True
    # The demo dataset ("Use the demo dataset", then "Estimate" at once) too.
    demo = client_in.post("/datasets/demo/")
    assert demo.status_code == 302
    demo_ds = Dataset.objects.get(owner=user, name=services.DEMO_DATASET_NAME)
    body = {"dataset": str(demo_ds.id), "base_model": str(base_model.id)}
    assert api.post("/api/v1/estimate/", body, format="json").json()["lengths_known"] is True
    assert sent == []


def test_a_count_that_fails_during_the_upload_is_left_to_the_worker(api, user, base_model, sent):
    with mock.patch.object(token_profiles, "token_profile", side_effect=RuntimeError("tokenizer crashed")):
        uploaded = api.post(
            "/api/v1/datasets/",
            {"file": SimpleUploadedFile("c.jsonl", jsonl({"messages": m} for m in memorisable_conversations(2)))},
            format="multipart",
        )
    assert uploaded.status_code == 201, uploaded.content  # the upload itself still succeeds
    profile = TokenProfile.objects.get(dataset_id=uploaded.json()["id"])
    assert profile.status == "pending" and sent == [(queue.TOKEN_PROFILE, profile.id)]


def test_a_new_dataset_is_counted_by_a_worker_once_and_every_view_reads_that(
    client_in, api, user, base_model, sent, count_later
):
    ds = services.dataset_create(
        owner=user, upload=SimpleUploadedFile("c.jsonl", jsonl({"messages": m} for m in memorisable_conversations(8)))
    )
    profile = TokenProfile.objects.get(dataset=ds)
    assert profile.status == "pending" and profile.total == 8
    assert sent == [(queue.TOKEN_PROFILE, profile.id)], "queued for the background worker"

    status = client_in.get(f"/datasets/{ds.id}/tokens/?model={base_model.id}").json()
    assert status == {"status": "pending", "done": 0, "total": 8, "error": ""}
    assert count_tokens() == 1
    assert client_in.get(f"/datasets/{ds.id}/tokens/?model={base_model.id}").json()["status"] == "ready"

    # Any max length from then on is arithmetic on the stored counts: no tokenizer in the web process.
    with mock.patch("worker.data.tokenization.tokenize_example", side_effect=AssertionError("tokenized again")):
        for max_length in (16, 24, 64, 100000):
            html = client_in.get(f"/datasets/{ds.id}/?max_length={max_length}").content.decode()
            assert 'id="histogram-data"' in html, max_length
        est = api.post("/api/v1/estimate/", {"dataset": str(ds.id), "base_model": str(base_model.id)}, format="json")
    assert TokenProfile.objects.filter(dataset=ds).count() == 1 and len(sent) == 1
    assert est.json()["lengths_known"] is True, est.content


def test_models_with_the_same_tokenizer_share_one_count(user, base_model, tiny_llama, tmp_path, sent):
    twin = tmp_path / "twin"
    shutil.copytree(tiny_llama, twin)
    twin_model = base_model_register(name="tiny-twin", path=twin)
    assert tokenizer_fingerprint(str(twin)) == tokenizer_fingerprint(str(tiny_llama))
    ds = services.dataset_create(
        owner=user, upload=SimpleUploadedFile("c.jsonl", jsonl({"messages": m} for m in memorisable_conversations(3)))
    )
    first = token_profiles.token_profile_request(dataset=ds, model_path=base_model.path)
    assert token_profiles.token_profile_request(dataset=ds, model_path=twin_model.path).id == first.id
    config = twin / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 12345}))
    assert token_profiles.token_profile_request(dataset=ds, model_path=twin_model.path).id != first.id


def test_the_estimate_before_the_count_is_marked_approximate_over_rest(api, user, base_model, sent, count_later):
    ds = services.dataset_create(
        owner=user, upload=SimpleUploadedFile("c.jsonl", jsonl({"messages": m} for m in memorisable_conversations(4)))
    )
    body = {"dataset": str(ds.id), "base_model": str(base_model.id), "config": {"max_seq_length": 64}}
    first = api.post("/api/v1/estimate/", body, format="json")
    assert first.json()["lengths_known"] is False, first.content
    pending = api.get(f"/api/v1/datasets/{ds.id}/tokens/?max_length=20").json()
    assert (pending["status"], pending["lengths"], pending["truncated"]) == ("pending", None, None)
    count_tokens()
    ready = api.get(f"/api/v1/datasets/{ds.id}/tokens/?max_length=20&base_model={base_model.id}").json()
    assert ready["status"] == "ready" and len(ready["lengths"]) == 4 and ready["truncated"] == 4
    assert ready["trained_tokens"] > 0
    assert api.post("/api/v1/estimate/", body, format="json").json()["lengths_known"] is True
    bad = api.get(f"/api/v1/datasets/{ds.id}/tokens/?max_length=3")
    assert bad.status_code == 400 and "max_length" in bad.json(), bad.content


def test_token_counts_are_the_owners_only(api_bob, client, other_user, dataset, base_model):
    assert api_bob.get(f"/api/v1/datasets/{dataset.id}/tokens/").status_code == 404
    client.force_login(other_user)
    assert client.get(f"/datasets/{dataset.id}/tokens/").status_code == 404


def test_a_lost_count_is_sent_again_by_the_sweep_and_a_failed_one_says_why(
    client_in, user, base_model, sent, count_later
):
    ds = services.dataset_create(
        owner=user, upload=SimpleUploadedFile("c.jsonl", jsonl({"messages": m} for m in memorisable_conversations(2)))
    )
    profile = TokenProfile.objects.get(dataset=ds)
    assert token_profiles.token_profiles_resend(stale_seconds=60) == 0, "a fresh one is not lost"
    TokenProfile.objects.filter(id=profile.id).update(updated=timezone.now() - timedelta(minutes=5))
    assert token_profiles.token_profiles_resend(stale_seconds=60) == 1
    assert sent[-1] == (queue.TOKEN_PROFILE, profile.id)

    with mock.patch.object(
        token_profiles,
        "token_profile",
        side_effect=ValueError("the chat template does not render conversation prefixes as text prefixes"),
    ):
        assert token_profiles.token_profile_compute(profile_id=profile.id) == "failed"
    html = client_in.get(f"/datasets/{ds.id}/").content.decode()
    assert "could not be counted with tiny-llama's tokenizer: the chat template does not render" in html


# --- large uploads: stored by the request, checked by the background worker -------------------------


def test_progress_of_a_check_is_relayed_from_the_child(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl({"prompt": f"q{i}", "completion": f"a{i}"} for i in range(50)))
    stages = []
    summary = load_dataset_file_limited(
        data, normalized_path=tmp_path / "n.jsonl", on_progress=lambda stage, rows: stages.append((stage, rows))
    )
    assert summary.rows == 50
    assert stages[-1] == ("writing the examples", 50), stages


def test_a_large_upload_on_the_page_is_checked_in_the_background(client_in, user, base_model, settings, sent):
    settings.DATASET_CHECK_INLINE_BYTES = 100
    data = jsonl({"messages": m} for m in memorisable_conversations(5))
    response = client_in.post("/datasets/", {"file": SimpleUploadedFile("big.jsonl", data), "name": "Big one"})
    check = UploadCheck.objects.get(owner=user)
    assert response.status_code == 302 and response.url == f"/datasets/checks/{check.id}/"
    assert sent == [(queue.CHECK_UPLOAD, str(check.id))] and not Dataset.objects.exists()
    page = client_in.get(response.url).content.decode()
    assert "Waiting for a worker" in page and f'data-poll-url="/datasets/checks/{check.id}/status/"' in page

    assert uploads.upload_check_run(check_id=check.id) == "ready"
    assert uploads.upload_check_run(check_id=check.id) == "skipped", "a second message changes nothing"
    status = client_in.get(f"/datasets/checks/{check.id}/status/").json()
    ds = Dataset.objects.get(owner=user)
    assert (status["status"], status["rows"], status["dataset"]) == ("ready", 5, str(ds.id))
    assert (ds.name, ds.rows, ds.size_bytes) == ("Big one", 5, len(data))
    done = client_in.get(f"/datasets/checks/{check.id}/")
    assert done.status_code == 302 and done.url == f"/datasets/{ds.id}/"
    assert not list((settings.MEDIA_ROOT / "datasets" / "pending").glob("*")), "the parked file moved into place"


def test_a_bad_large_upload_fails_its_check_with_located_problems_and_leaves_nothing(api, user, settings, sent):
    settings.DATASET_CHECK_INLINE_BYTES = 10
    data = b'{"prompt": "hi", "completion": "there"}\n{"prompt": "hi"}\nnot json\n'
    response = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("bad.jsonl", data)}, format="multipart")
    assert response.status_code == 202 and response["Location"] == f"/api/v1/datasets/checks/{response.json()['id']}/"
    assert response.json()["status"] == "queued"
    assert uploads.upload_check_run(check_id=response.json()["id"]) == "failed"
    check = api.get(response["Location"]).json()
    assert check["status"] == "failed" and check["problem_total"] == 2
    assert check["problems"][0].startswith("bad.jsonl, line 2") and "completion" in check["problems"][0]
    assert check["problems"][1].startswith("bad.jsonl, line 3")
    assert not Dataset.objects.exists()
    assert not [p for p in (settings.MEDIA_ROOT / "datasets").rglob("*") if p.is_file()]


def test_a_large_upload_with_unknown_columns_asks_for_a_mapping_then_checks_again(client_in, api, user, settings, sent):
    settings.DATASET_CHECK_INLINE_BYTES = 10
    data = jsonl({"Customer Question": f"q{i}", "Agent Answer": f"a{i}"} for i in range(4))
    check_id = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("cs.jsonl", data)}, format="multipart").json()[
        "id"
    ]
    assert uploads.upload_check_run(check_id=check_id) == "needs_mapping"
    check = api.get(f"/api/v1/datasets/checks/{check_id}/").json()
    assert check["columns"] == ["Customer Question", "Agent Answer"] and check["upload_token"]
    assert check["suggested_mapping"] == {"prompt": "Customer Question", "response": "Agent Answer"}
    assert check["column_samples"] == {"Customer Question": ["q0", "q1", "q2"], "Agent Answer": ["a0", "a1", "a2"]}
    page = client_in.get(f"/datasets/checks/{check_id}/").content.decode()
    assert 'id="mapping-form"' in page and "Customer Question" in page
    assert '<option value="Agent Answer" selected>' in page and "e.g. “q0” · “q1” · “q2”" in page

    wrong = api.post(
        "/api/v1/datasets/map/",
        {
            "upload_token": check["upload_token"],
            "filename": "cs.jsonl",
            "mapping": {"prompt": "Question", "response": "Agent Answer"},
        },
        format="json",
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "prompt"
    again = api.post(
        "/api/v1/datasets/map/",
        {
            "upload_token": check["upload_token"],
            "filename": "cs.jsonl",
            "mapping": {"prompt": "Customer Question", "response": "Agent Answer"},
        },
        format="json",
    )
    assert again.status_code == 202 and again.json()["status"] == "queued"
    assert uploads.upload_check_run(check_id=check_id) == "ready"
    ds = Dataset.objects.get(owner=user)
    assert (ds.rows, ds.schema, ds.mapping["prompt"]) == (4, "mapped", "Customer Question")


def test_upload_checks_are_the_owners_only(api, api_bob, settings, sent):
    settings.DATASET_CHECK_INLINE_BYTES = 10
    check_id = api.post(
        "/api/v1/datasets/", {"file": SimpleUploadedFile("d.jsonl", b'{"text": "hello"}\n')}, format="multipart"
    ).json()["id"]
    assert api_bob.get(f"/api/v1/datasets/checks/{check_id}/").status_code == 404


def test_a_check_lost_with_its_worker_is_retried_then_given_up(user, settings, sent):
    settings.DATASET_CHECK_INLINE_BYTES = 10
    check = uploads.dataset_upload(owner=user, upload=SimpleUploadedFile("d.jsonl", b'{"text": "hello"}\n'))
    # The worker took it and died (status checking, never advanced).
    UploadCheck.objects.filter(id=check.id).update(status="checking", attempts=1)
    assert uploads.upload_checks_resend(stale_seconds=60) == 0, "a running check is not lost yet"
    UploadCheck.objects.filter(id=check.id).update(updated=timezone.now() - timedelta(minutes=5))
    assert uploads.upload_checks_resend(stale_seconds=60) == 1
    check.refresh_from_db()
    assert check.status == "queued" and sent[-1] == (queue.CHECK_UPLOAD, str(check.id))
    UploadCheck.objects.filter(id=check.id).update(
        status="checking", attempts=3, updated=timezone.now() - timedelta(minutes=5)
    )
    assert uploads.upload_checks_resend(stale_seconds=60) == 0
    check.refresh_from_db()
    assert check.status == "failed" and "interrupted 3 times" in check.problems[0]


def test_the_estimate_warns_when_the_max_length_cuts_examples_and_times_the_first_job(
    api, user, base_model, sent, monkeypatch, count_later
):
    import worker.speed

    monkeypatch.setattr(worker.speed, "matmul_flops", lambda device, width, cache_file=None: 1e10)
    ds = services.dataset_create(
        owner=user, upload=SimpleUploadedFile("c.jsonl", jsonl({"messages": m} for m in memorisable_conversations(4)))
    )
    body = {"dataset": str(ds.id), "base_model": str(base_model.id), "config": {"max_seq_length": 16}}
    first = api.post("/api/v1/estimate/", body, format="json").json()
    assert "still being counted" in first["warnings"][0]
    # No job has run on this model: the time comes from this machine's (here: stubbed) speed.
    assert first["seconds"] > 0 and first["seconds_source"] == "calibrated"
    count_tokens()
    cut = api.post("/api/v1/estimate/", body, format="json").json()
    lengths = api.get(f"/api/v1/datasets/{ds.id}/tokens/?max_length=16&base_model={base_model.id}").json()["lengths"]
    longer = sum(1 for n in lengths if n > 16)
    assert longer and cut["warnings"][0] == f"{longer} of 4 examples are longer than 16 tokens and will be cut."
    roomy = api.post("/api/v1/estimate/", {**body, "config": {"max_seq_length": max(lengths)}}, format="json").json()
    assert roomy["warnings"] == []
