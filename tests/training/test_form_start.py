"""Where the New job form starts: the method follows the data (preference pairs: DPO on top of the latest job on
their base), too few examples are warned about before a job starts, every dataset says what it holds, the
dataset asked for is the one shown, and a first-time user's first page starts from the demo or an upload."""

import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from jobs.datasets.models import Dataset
from jobs.datasets.services import dataset_create_from_examples
from jobs.training.models import Adapter, FineTuneJob, JobStatus
from tests.training.test_jobs import form_data
from tests.worker.test_preference import colour_pairs
from worker.config import TrainConfig

pytestmark = pytest.mark.django_db


def finished_job(owner, base_model, name: str, **config) -> FineTuneJob:
    """A succeeded job with an adapter row (nothing trained)."""
    job = FineTuneJob.objects.create(
        owner=owner,
        base_model=base_model,
        config=TrainConfig.from_dict(config).to_dict(),
        name=name,
        status=JobStatus.SUCCEEDED,
    )
    Adapter.objects.create(job=job, folder=f"jobs/{job.id}/adapter", zip_file="a.zip", size_bytes=1, sha256="0" * 64)
    return job


def pairs(owner, n: int, base_model=None) -> Dataset:
    """A preference dataset made as the compare votes make one (on `base_model` when given)."""
    return dataset_create_from_examples(
        owner=owner,
        examples=colour_pairs(n, 1),
        name=f"{n} votes",
        filename="compare-votes.jsonl",
        extra_stats={"source": "compare_votes", "base_model": str(base_model.id) if base_model else None},
    )


def selected(html: str, field: str) -> list[str]:
    """The values selected in the form's <select> `field`."""
    block = re.search(rf'<select name="{field}"[^>]*>(.*?)</select>', html, re.S)
    assert block, f"no select {field}"
    return re.findall(r'<option value="([^"]*)"[^>]*\bselected\b', block.group(1))


def test_a_preference_dataset_opens_the_form_with_dpo_on_top_of_the_latest_job_on_its_base(client_in, user, base_model):
    finished_job(user, base_model, "older")
    latest = finished_job(user, base_model, "colours v2")
    finished_job(user, base_model, "pissa run", init_lora_weights="pissa")  # cannot be trained further
    data = pairs(user, 24, base_model)
    html = client_in.get(f"/jobs/new/?dataset={data.id}").content.decode()
    assert selected(html, "method") == ["dpo"] and selected(html, "start_from") == [str(latest.id)]
    assert selected(html, "dataset") == [str(data.id)] and selected(html, "base_model") == [str(base_model.id)]
    assert "Trains on your 24 preference pairs from 24 votes with DPO, on top of colours v2." in html
    # The same link with the method and the job to build on given explicitly, as a link can say.
    older = FineTuneJob.objects.get(name="older")
    html = client_in.get(f"/jobs/new/?dataset={data.id}&method=orpo&start_from={older.id}").content.decode()
    assert selected(html, "method") == ["orpo"] and selected(html, "start_from") == [str(older.id)]
    # Without a job to build on: DPO from a new adapter.
    FineTuneJob.objects.all().delete()
    html = client_in.get(f"/jobs/new/?dataset={data.id}").content.decode()
    assert selected(html, "method") == ["dpo"] and selected(html, "start_from") == [""]
    assert "Trains on your 24 preference pairs from 24 votes with DPO." in html


def test_the_method_follows_the_data_of_a_cloned_job(client_in, user, base_model, dataset):
    sft = finished_job(user, base_model, "sft")
    sft.dataset = dataset
    sft.save()
    data = pairs(user, 24)
    html = client_in.get(f"/jobs/new/?from={sft.id}&dataset={data.id}").content.decode()
    assert selected(html, "method") == ["dpo"] and selected(html, "dataset") == [str(data.id)]
    assert "24 votes holds preference pairs: the method is now dpo." in html
    kinds = json.loads(re.search(r'id="dataset-kinds"[^>]*>(.*?)</script>', html, re.S).group(1))
    assert kinds[str(data.id)]["pairs"] is True and kinds[str(dataset.id)]["pairs"] is False


def test_too_few_examples_or_pairs_are_warned_about_before_the_job_starts(client_in, user, base_model, dataset):
    few = pairs(user, 3, base_model)
    warning = "Only 3 preference pairs: the model will barely change; 20 or more is a useful start."
    assert warning in client_in.get(f"/jobs/new/?dataset={few.id}").content.decode()
    assert warning in client_in.get(f"/datasets/{few.id}/").content.decode()
    values = form_data(base_model, few, method="dpo", beta=0.1, validation="none")
    estimate = client_in.post("/jobs/estimate/", values)
    assert estimate.status_code == 200, estimate.json()
    assert warning in estimate.json()["estimate"]["warnings"]
    chat = "Only 8 examples: the model will barely change; 50 or more is a useful start."
    assert chat in client_in.get(f"/jobs/new/?dataset={dataset.id}").content.decode()
    many = pairs(user, 24, base_model)
    page = client_in.get(f"/jobs/new/?dataset={many.id}").content.decode()
    assert "barely change" not in page.split('id="dataset-kinds"')[0]


def test_each_dataset_says_what_it_holds(client_in, user, dataset):
    data = pairs(user, 24)
    page = client_in.get("/datasets/").content.decode()
    rows = {name: row for row in page.split("<tr>") for name in (dataset.name, data.name) if f">{name}</a>" in row}
    assert "Chat examples" in rows[dataset.name] and "Preference pairs" not in rows[dataset.name]
    assert "Preference pairs" in rows[data.name] and "Train on this with DPO" in rows[data.name]
    assert "Preference pairs: trains with DPO" in client_in.get(f"/datasets/{data.id}/").content.decode()
    assert "Chat examples" in client_in.get(f"/datasets/{dataset.id}/").content.decode()


def test_the_dataset_asked_for_is_the_one_shown(client_in, user, other_user, base_model, dataset):
    newer = pairs(user, 24)  # the newest dataset, listed first
    html = client_in.get(f"/jobs/new/?dataset={dataset.id}").content.decode()
    assert selected(html, "dataset") == [str(dataset.id)] and selected(html, "method") == ["supervised"]
    assert re.search(r'<select name="dataset"[^>]*autocomplete="off"', html), "a reload keeps the chosen dataset"
    # A link to a dataset that is gone (or someone else's) asks for one instead of showing the newest.
    foreign = pairs(other_user, 24)
    for missing in (foreign.id, "8d3e41c4-5a0c-4f54-9d55-0c4c3b0b3e8e"):
        html = client_in.get(f"/jobs/new/?dataset={missing}").content.decode()
        assert selected(html, "dataset") == [""] and "Pick a dataset" in html
        assert "The dataset in the link does not exist (any more): pick one below." in html
        assert str(foreign.id) not in html
    # "New job from this" of a job whose dataset was deleted does the same.
    job = finished_job(user, base_model, "old run")
    html = client_in.get(f"/jobs/new/?from={job.id}").content.decode()
    assert selected(html, "dataset") == [""] and "The dataset of old run was deleted: pick one below." in html
    # Submitting without a dataset names the field; the newest is never taken instead.
    values = {k: v for k, v in form_data(base_model, newer).items() if k != "dataset"}
    response = client_in.post("/jobs/new/", values)
    assert response.status_code == 400 and selected(response.content.decode(), "dataset") == [""]


def test_the_first_page_starts_a_new_user_from_the_demo_or_an_upload(client_in, user, base_model):
    page = client_in.get(reverse("job-list")).content.decode()
    welcome = page.split('id="welcome"')[1].split("</section>")[0]
    assert "Use the demo dataset" in welcome and 'type="file"' in welcome
    assert f'action="{reverse("dataset-demo")}"' in welcome and f'action="{reverse("dataset-list")}"' in welcome
    # The upload form there works as the datasets page's does.
    data = "".join(json.dumps(e.to_json()) + "\n" for e in colour_pairs(24, 2)).encode()
    response = client_in.post(reverse("dataset-list"), {"file": SimpleUploadedFile("pairs.jsonl", data)})
    made = Dataset.objects.get(owner=user)
    assert response.status_code == 302 and response["Location"] == reverse("dataset-detail", args=[made.id])
    assert made.holds_pairs and made.kind_label == "Preference pairs"
    # Once the user has a job the page is the jobs list, without the welcome.
    finished_job(user, base_model, "first")
    assert 'id="welcome"' not in client_in.get(reverse("job-list")).content.decode()
