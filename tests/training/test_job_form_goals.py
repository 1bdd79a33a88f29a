"""The New job form is simple by default: a dataset, a base model and a goal in plain words (the presets), then
Start; every other setting sits under "Custom settings" in groups with plain labels, the technical name as a
hint. The estimate says what its memory limit is."""

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils.html import escape

from jobs.datasets import services as dataset_services
from jobs.training.models import FineTuneJob
from tests.training.test_jobs import form_data, submit
from worker.config import PRESETS, setting_metadata
from worker.presets import PRESET_GOALS

SETTINGS = setting_metadata()


@pytest.fixture
def dataset(user, chat_file):
    return dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("chat.jsonl", chat_file.read_bytes()))


def controls(html: str) -> list[str]:
    """The inputs a person sees in `html`: every input, select and textarea but the hidden ones (and those inside
    a hidden section or row, such as the reward builder of another method)."""
    html = re.sub(r"<(section|div)\b[^>]*\shidden[\s>][^<]*.*?</\1>", "", html, flags=re.S)
    found = re.findall(r"<(?:input|select|textarea)\b[^>]*>", html)
    return [c for c in found if 'type="hidden"' not in c]


def test_a_fresh_form_shows_a_dataset_a_base_model_and_goals_and_folds_the_rest(client_in, base_model, dataset):
    html = client_in.get(f"/jobs/new/?dataset={dataset.id}").content.decode()
    start = html.index('id="job-form"')
    form = html[start : html.index("</form>", start)]
    first, custom = form.split('<details id="custom">', 1)  # closed: no "open"
    assert len(controls(first)) <= 8, controls(first)
    assert {'name="dataset"', 'name="base_model"', 'name="preset"'} <= {
        m for c in controls(first) for m in re.findall(r'name="\w+"', c)
    }
    for title, line in PRESET_GOALS.values():
        assert f"<strong>{title}</strong>" in first and escape(line) in first
    assert [title for title, _ in PRESET_GOALS.values()] == ["Quick try", "Balanced", "Best quality"]
    assert list(PRESET_GOALS) == list(PRESETS), "each goal is a preset"
    assert 'id="goal-balanced" checked' in first and 'id="submit-job"' in form
    # Every setting is under Custom settings, in its group.
    for name in SETTINGS:
        assert f'name="{name}"' in custom and f'name="{name}"' not in first, name
    for legend in ("What to learn from", "How much to train", "Adapter size and layers", "Memory and speed"):
        assert f"<legend>{legend}</legend>" in custom


def test_plain_labels_with_the_technical_name_as_a_hint(client_in, base_model, dataset):
    html = client_in.get(f"/jobs/new/?dataset={dataset.id}").content.decode()
    for name, plain, term in (
        ("rank", "Adapter size", "Rank"),
        ("alpha", "Adapter strength", "Alpha"),
        ("dropout", "Overfitting guard", "Dropout"),
        ("qlora", "Save memory: 4-bit base", "QLoRA (4-bit NF4 base)"),
        ("validation_seed", "Hold-back shuffle number", "Split seed"),
    ):
        assert f'<label for="id_{name}">{plain} <small class="term">{term}</small></label>' in html, name
    labels = re.findall(r'<label for="id_\w+">([^<]*)', html)
    for jargon in ("Rank", "Alpha", "Dropout", "QLoRA (4-bit NF4 base)", "Split seed", "Epochs", "Lr scheduler"):
        assert jargon not in [label.strip() for label in labels], jargon
    assert "q, k, v, o projections" not in html and "Attention layers only" in html
    # A setting whose usual name is already plain has no hint beside it.
    assert '<label for="id_keep_best">Keep the best checkpoint</label>' in html


@pytest.mark.parametrize("goal", ["quick", "quality"])
def test_a_goal_sets_its_presets_values(goal, client_in, base_model, dataset, django_capture_on_commit_callbacks):
    """Without the page's script too: the goal chosen decides the settings it defines; the others stay as set."""
    data = form_data(base_model, dataset, preset=goal, rank=64, alpha=128, epochs=7, learning_rate=0.05)
    response, _ = submit(client_in, data, django_capture_on_commit_callbacks)
    assert response.status_code == 302, response.content.decode()[:2000]
    config = FineTuneJob.objects.get().config
    assert {k: config[k] for k in PRESETS[goal]} == PRESETS[goal]
    assert config["batch_size"] == data["batch_size"] and config["max_seq_length"] == data["max_seq_length"]


def test_my_own_settings_keeps_every_value_as_set(client_in, base_model, dataset, django_capture_on_commit_callbacks):
    data = form_data(base_model, dataset, preset="", rank=64, alpha=128, epochs=1, learning_rate=0.05)
    response, _ = submit(client_in, data, django_capture_on_commit_callbacks)
    assert response.status_code == 302, response.content.decode()[:2000]
    config = FineTuneJob.objects.get().config
    assert (config["rank"], config["alpha"], config["epochs"], config["learning_rate"]) == (64, 128, 1, 0.05)


def test_an_error_under_custom_settings_opens_it_and_names_the_setting_both_ways(
    client_in, base_model, dataset, django_capture_on_commit_callbacks
):
    response, _ = submit(client_in, form_data(base_model, dataset, grad_accum=0), django_capture_on_commit_callbacks)
    html = response.content.decode()
    assert response.status_code == 400 and '<details id="custom" open>' in html
    assert 'href="#id_grad_accum">Batches per step</a> (Gradient accumulation): Must be between 1' in html
    assert not FineTuneJob.objects.exists()
    fine = client_in.get(f"/jobs/new/?dataset={dataset.id}").content.decode()
    assert '<details id="custom">' in fine


def test_the_estimate_says_what_its_memory_limit_is(client_in, base_model, dataset, settings):
    """No train worker has announced itself here: the limit is this machine's memory, or the one set for training."""
    settings.TRAIN_MEMORY_LIMIT_MB = None
    est = client_in.post("/jobs/estimate/", form_data(base_model, dataset)).json()["estimate"]
    assert est["memory_limit_of"] == "this machine has" and est["memory_limit_mb"] > 0
    settings.TRAIN_MEMORY_LIMIT_MB = 24105
    est = client_in.post("/jobs/estimate/", form_data(base_model, dataset)).json()["estimate"]
    assert (est["memory_limit_mb"], est["memory_limit_of"]) == (24105, "set aside for training on this machine")


def test_with_train_workers_the_memory_limit_is_the_largest_workers(user, base_model, dataset):
    from jobs.training.plan import job_estimate
    from jobs.training.routing import Capacity
    from worker.config import TrainConfig

    gpus = [("small", Capacity(device="cuda", count=1, memory_mb=16_000)), ("big", Capacity("cuda", 2, 80_000))]
    est = job_estimate(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(), fleet=gpus)
    assert (est.memory_limit_mb, est.memory_limit_of) == (80_000, "each GPU of the largest train worker has")
    cpus = [("cpu", Capacity(device="cpu", count=4, memory_mb=32_000))]
    est = job_estimate(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(), fleet=cpus)
    assert (est.memory_limit_mb, est.memory_limit_of) == (32_000, "the largest train worker has")


def test_with_prompts_the_reward_builder_shows_and_the_form_stays_short(client_in, user, base_model):
    import json

    from django.core.files.uploadedfile import SimpleUploadedFile

    from jobs.datasets.services import dataset_create

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}], "answer": str(i)} for i in range(3)]
    upload = SimpleUploadedFile("p.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    prompts = dataset_create(owner=user, upload=upload)
    html = client_in.get(f"/jobs/new/?dataset={prompts.id}").content.decode()
    start = html.index('id="job-form"')
    first = html[start : html.index("</form>", start)].split('<details id="custom">', 1)[0]
    assert 'id="reward-builder"' in first and 'id="rb-start"' in " ".join(controls(first))
    assert len(controls(first)) <= 8, controls(first)
