"""Compare runs in plain words: the dataset first, an "Only differences" switch, values as people read them, "—"
where a setting does not apply, a loss chart per kind of loss, and the kept adapter's eval loss as the job page
shows it."""

import json
import re
from html import unescape

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.common.human_units import number_words
from jobs.datasets.services import dataset_create
from jobs.training.files import job_output_dir
from jobs.training.models import FineTuneJob, JobEvent, JobStatus, MetricPoint
from jobs.training.summary import kept_eval_loss, setting_applies, setting_matters
from worker.config import TrainConfig


def make_job(user, base_model, dataset, name, *, evaluation=None, status=JobStatus.SUCCEEDED, **config):
    job = FineTuneJob.objects.create(
        owner=user,
        base_model=base_model,
        dataset=dataset,
        dataset_name=dataset.name,
        name=name,
        config=TrainConfig(**config).to_dict(),
        status=status,
        step=8,
        total_steps=8,
        final_loss=0.4,
        validation={"kind": "split", "percent": 25, "seed": 1, "train_rows": 6, "eval_rows": 2},
    )
    JobEvent.objects.create(job=job, kind="setup", message="loading tokenizer and data on cpu")
    if evaluation is not None:
        job_output_dir(job).mkdir(parents=True, exist_ok=True)
        job_output_dir(job).joinpath("evaluation.json").write_text(json.dumps(evaluation))
    return job


@pytest.fixture
def pairs(user):
    lines = [{"prompt": f"colour {i}", "chosen": "red", "rejected": "blue"} for i in range(5)]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return dataset_create(owner=user, upload=SimpleUploadedFile("pairs.jsonl", body), name="pairs.jsonl")


def table_of(html: str) -> str:
    return html[html.index('id="runs-table"') : html.index("</table>")]


def text_of(fragment: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def rows_of(response) -> dict:
    return {row.name: row for row in response.context["rows"]}


def test_the_dataset_base_method_and_start_come_first_and_the_dataset_is_a_difference(
    client_in, user, base_model, dataset, pairs
):
    sft = make_job(user, base_model, dataset, "sft", learning_rate=2e-4)
    dpo = make_job(user, base_model, pairs, "dpo", method="dpo", start_from=str(sft.id), learning_rate=5e-5)
    response = client_in.get(f"/jobs/compare/?job={sft.id}&job={dpo.id}")
    rows = response.context["rows"]
    assert [r.name for r in rows[:4]] == ["dataset", "base_model", "method", "start_from"]
    by_job = {j.name: i for i, j in enumerate(response.context["jobs"])}
    data = rows[0]
    assert data.differs and data.label == "Dataset"
    assert data.cells[by_job["sft"]].text == "colours.jsonl" and data.cells[by_job["dpo"]].text == "pairs.jsonl"
    assert (
        data.cells[by_job["sft"]].note == f"{dataset.rows} examples"
        and data.cells[by_job["dpo"]].note == "5 preference pairs"
    )
    html = response.content.decode()
    assert f'href="/datasets/{pairs.id}/"' in table_of(html) and f'href="/datasets/{dataset.id}/"' in table_of(html)
    start = rows_of(response)["start_from"]
    assert start.cells[by_job["sft"]].text == "a new adapter"
    assert start.cells[by_job["dpo"]].text == "sft" and start.cells[by_job["dpo"]].href == f"/jobs/{sft.id}/"
    assert rows_of(response)["method"].cells[by_job["dpo"]].text.endswith("(DPO)")


def test_only_differences_is_on_by_default_and_hides_the_rows_where_runs_agree(
    client_in, user, base_model, dataset, settings
):
    a = make_job(user, base_model, dataset, "r8", rank=8)
    b = make_job(user, base_model, dataset, "r16", rank=16)
    response = client_in.get(f"/jobs/compare/?job={a.id}&job={b.id}")
    html = response.content.decode()
    assert re.search(r'<input type="checkbox" id="only-differences" checked>', html)
    assert 'class="runs-table stack only-differences"' in html
    rows = rows_of(response)
    assert rows["rank"].differs and not rows["learning_rate"].differs and not rows["dataset"].differs
    assert response.context["differing"] == 1
    assert re.search(r'<tr data-setting="rank" class="differs">', html)
    for same in ("learning_rate", "dataset", "method", "alpha"):
        assert f'<tr data-setting="{same}" class="same">' in html, same
    css = (settings.BASE_DIR / "static" / "app" / "app.css").read_text()
    assert ".runs-table.only-differences tr.same { display:none; }" in css
    assert "Showing the 1 of" in html
    # One run alone: nothing to hide.
    single = client_in.get(f"/jobs/compare/?job={a.id}").content.decode()
    assert 'id="only-differences"' not in single and "only-differences" not in single.split('id="runs-table"')[1][:60]


def test_values_read_as_words_with_the_usual_name_as_a_hint_and_no_python_literals(
    client_in, user, base_model, dataset
):
    a = make_job(user, base_model, dataset, "a", learning_rate=2e-4, use_dora=True)
    b = make_job(user, base_model, dataset, "b", learning_rate=5e-5, modules_to_save=("lm_head",))
    response = client_in.get(f"/jobs/compare/?job={a.id}&job={b.id}")
    text = text_of(table_of(response.content.decode()))
    for literal in ("False", "True", "None", "[]", "()", "e-05", "''"):
        assert literal not in text, literal
    rows = rows_of(response)
    by_job = {j.name: i for i, j in enumerate(response.context["jobs"])}
    assert rows["learning_rate"].label == "Learning speed" and rows["learning_rate"].hint == "Learning rate"
    assert rows["learning_rate"].cells[by_job["a"]].text == "0.0002"
    assert rows["learning_rate"].cells[by_job["b"]].text == "5e-5"
    assert rows["use_dora"].cells[by_job["a"]].text == "Yes" and rows["use_dora"].cells[by_job["b"]].text == "No"
    assert rows["modules_to_save"].cells[by_job["a"]].text == "none"
    assert rows["modules_to_save"].cells[by_job["b"]].text == "lm_head"
    assert rows["max_steps"].cells[0].text == "no limit" and rows["eval_every"].cells[0].text == "about 10 times a run"
    assert rows["validation"].cells[0].text == "25 % held back (shuffle 1)"
    assert "Adapter size" in text and "Rank" in text  # the plain label, then the usual name


def test_a_setting_the_method_does_not_use_shows_not_applicable(client_in, user, base_model, dataset, pairs):
    sft = make_job(user, base_model, dataset, "sft")
    dpo = make_job(user, base_model, pairs, "dpo", method="dpo", beta=0.2)
    response = client_in.get(f"/jobs/compare/?job={sft.id}&job={dpo.id}")
    by_job = {j.name: i for i, j in enumerate(response.context["jobs"])}
    beta = rows_of(response)["beta"]
    assert beta.cells[by_job["sft"]].text == "—" and beta.cells[by_job["dpo"]].text == "0.2" and beta.differs
    assert all(c.text == "—" for c in rows_of(response)["target_modules"].cells)  # no custom layer list
    assert all(c.text == "—" for c in rows_of(response)["liger"].cells)  # CPU runs
    # The job page keeps hiding the same settings, and the optional empty ones.
    assert setting_matters("max_steps", {"max_steps": 0}, "cpu") and not setting_applies("max_steps", {}, "cpu")


def test_mixed_methods_get_a_loss_chart_each_labelled_in_words(client_in, user, base_model, dataset, pairs):
    sft = make_job(user, base_model, dataset, "sft")
    dpo = make_job(user, base_model, pairs, "dpo", method="dpo")
    orpo = make_job(user, base_model, pairs, "orpo", method="orpo")
    for job, loss in ((sft, 1.8), (dpo, 0.69), (orpo, 2.5)):
        MetricPoint.objects.create(job=job, step=1, train_loss=loss)
    response = client_in.get(f"/jobs/compare/?job={sft.id}&job={dpo.id}&job={orpo.id}")
    charts = response.context["loss_charts"]
    assert [c["kind"] for c in charts] == ["supervised", "dpo", "orpo"]
    assert [c["axis"] for c in charts] == ["supervised loss", "DPO loss", "ORPO loss"]
    assert {s["label"]: s["method"] for s in response.context["series"]} == {
        "sft": "supervised",
        "dpo": "dpo",
        "orpo": "orpo",
    }
    html = response.content.decode()
    for kind in ("supervised", "dpo", "orpo"):
        assert f'<canvas id="runs-chart-{kind}" data-kind="{kind}"' in html
    assert "Preference pairs with DPO" in html and "own chart" in html
    alone = client_in.get(f"/jobs/compare/?job={sft.id}").context["loss_charts"]
    assert [c["kind"] for c in alone] == ["supervised"]


def test_the_eval_loss_is_the_kept_adapters_the_job_page_shows(client_in, user, base_model, dataset):
    evaluation = {
        "examples": 2,
        "loss": {"base": 2.5, "adapter": 1.2345},
        "perplexity": {"base": 12.2, "adapter": 3.4},
        "rates": {"base": {"exact": 0.0}, "adapter": {"exact": 0.5}},
        "rows": [],
    }
    kept = make_job(user, base_model, dataset, "kept", evaluation=evaluation)
    MetricPoint.objects.create(job=kept, step=4, train_loss=1.0, eval_loss=1.3, extra={"best": True})
    MetricPoint.objects.create(job=kept, step=8, train_loss=0.4, eval_loss=1.9)  # the last, not the kept one
    running = make_job(user, base_model, dataset, "running", status=JobStatus.RUNNING)
    MetricPoint.objects.create(job=running, step=2, train_loss=1.0, eval_loss=1.5, extra={"best": True})
    MetricPoint.objects.create(job=running, step=4, train_loss=0.9, eval_loss=1.7)
    response = client_in.get(f"/jobs/compare/?job={kept.id}&job={running.id}")
    by_job = {j.name: i for i, j in enumerate(response.context["jobs"])}
    finals = response.context["finals"]
    assert finals[by_job["kept"]]["eval_loss"] == 1.2345 and finals[by_job["running"]]["eval_loss"] == 1.5
    html = table_of(response.content.decode())
    row = re.search(r'<tr class="result" data-result="eval-loss">(.*?)</tr>', html, re.S)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
    job_page = client_in.get(f"/jobs/{kept.id}/").content.decode()
    shown = re.search(r'<td data-key="adapter-loss">(.*?)</td>', job_page)
    assert shown is not None and cells[by_job["kept"]] == shown.group(1) == "1.2345"
    assert "answers exactly as your data does 50 %" in job_page
    exact = re.search(r"Answers exactly as in your data held-out exact match (\S+ %|–) (\S+ %|–)", text_of(html))
    assert exact is not None and exact.group(by_job["kept"] + 1) == "50 %", text_of(html)


@pytest.mark.parametrize(
    ("evaluation", "points", "keep_best", "kept"),
    [
        ({"loss": {"adapter": 0.5}}, [(0.9, True), (1.1, False)], True, 0.5),  # measured on the kept adapter
        (None, [(1.0, True), (0.8, True), (0.95, False)], True, 0.8),  # the best step's adapter is kept
        (None, [(1.0, True), (0.8, True), (0.95, False)], False, 0.95),  # keep best off: the last one
        (None, [(None, False), (1.1, False)], True, 1.1),  # no point marked: the last
        (None, [], True, None),
    ],
)
def test_kept_eval_loss(evaluation, points, keep_best, kept):
    assert kept_eval_loss(evaluation=evaluation, eval_points=points, keep_best=keep_best) == kept


def test_numbers_are_written_one_way():
    assert [number_words(v) for v in (2.0, 2e-4, 5e-5, 0.05, 32, 1e-3, 1.5e-10)] == [
        "2",
        "0.0002",
        "5e-5",
        "0.05",
        "32",
        "0.001",
        "1.5e-10",
    ]
