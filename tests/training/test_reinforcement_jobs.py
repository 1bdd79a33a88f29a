"""Reinforcement jobs through the product: a dataset of prompts is marked as such and makes the form pick the
reinforcement method; REST, the OpenAI API (the official client's `method` shape) and the form plan one with its
grader checked where it is wrong; the worker trains it with the job's grader and the job page says the result in
words; the OpenAI job object carries the grader back."""

from __future__ import annotations

import json
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.datasets import services as dataset_services
from jobs.training import tasks as train_tasks
from jobs.training.models import FineTuneJob, JobStatus, MetricPoint
from tests.factories import bearer_client

QUESTIONS = ["what is the answer", "please reply", "hello world", "red green blue", "the quick brown fox", "yes no"]
DIGITS = {
    "type": "python",
    "name": "digits",
    "source": "def grade(sample, item):\n    text = sample['output_text']\n"
    "    return sum(c.isdigit() for c in text) / max(1, len(text))\n",
}
FAST = {
    "method": "reinforcement", "batch_size": 4, "learning_rate": 0.02, "warmup_ratio": 0, "target_preset": "all_linear",
    "rank": 8, "alpha": 16, "dropout": 0.0, "group_size": 8, "max_answer_tokens": 6, "beta": 0.0, "max_steps": 16,
    "eval_every": 8, "keep_best": False, "max_seq_length": 64,
}  # fmt: skip


@pytest.fixture
def prompts(user):
    rows = [{"messages": [{"role": "user", "content": QUESTIONS[i % 6]}], "answer": str(i)} for i in range(24)]
    upload = SimpleUploadedFile("prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    return dataset_services.dataset_create(owner=user, upload=upload)


def _create(api, base_model, dataset, **extra):
    body = {"dataset": str(dataset.id), "base_model": str(base_model.id), "config": FAST, "grader": DIGITS, **extra}
    body = {key: value for key, value in body.items() if value is not None}
    with mock.patch("jobs.training.tasks.job_run.delay"):
        return api.post("/api/v1/jobs/", body, format="json")


def test_prompts_are_their_own_kind_and_pick_the_method(client_in, prompts):
    assert prompts.schema == "prompts" and prompts.holds_prompts and prompts.data_method == "reinforcement"
    assert prompts.kind_label == "Prompts to reward"
    html = client_in.get(f"/jobs/new/?dataset={prompts.id}").content.decode()
    assert '<option value="reinforcement" selected>' in html
    assert "Trains on your" in html and "prompts from prompts.jsonl with reinforcement" in html


def test_a_reinforcement_job_is_planned_with_its_grader_checked(api, base_model, prompts, chat_file, user):
    missing = _create(api, base_model, prompts, grader=None)
    assert missing.status_code == 400 and missing.json()["error"]["field"] == "grader"
    wrong = _create(api, base_model, prompts, grader={**DIGITS, "source": "def grade(sample, item)\n  pass"})
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "grader.source"
    assert "SyntaxError" in wrong.json()["error"]["message"]
    judge = {"type": "score_model", "name": "j", "model": "no-such-model", "input": [{"role": "user", "content": "x"}]}
    unknown = _create(api, base_model, prompts, grader={"type": "multi", "name": "m", "graders": {"judge": judge},
                                                         "calculate_output": "judge"})  # fmt: skip
    assert unknown.status_code == 400 and unknown.json()["error"]["field"] == "grader.graders.judge.model"
    assert "there is no model named 'no-such-model'" in unknown.json()["error"]["message"]
    chats = dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("c.jsonl", chat_file.read_bytes()))
    other_kind = _create(api, base_model, chats)
    assert other_kind.status_code == 400 and "holds examples with answers" in other_kind.json()["error"]["message"]
    supervised = _create(api, base_model, prompts, config={**FAST, "method": "supervised"}, grader=None)
    assert "holds prompts without answers" in supervised.json()["error"]["message"]
    assert FineTuneJob.objects.count() == 0
    judged = _create(api, base_model, prompts, grader={**judge, "model": base_model.name})  # judged in training
    assert judged.status_code == 201, judged.content
    job = FineTuneJob.objects.get(id=judged.json()["id"])
    assert job.grader["model"] == base_model.name and job.grader["type"] == "score_model"  # kept in OpenAI's shape
    spec = train_tasks.build_train_spec(job)  # the worker gets the judge's folders
    assert spec.grader_judges == {base_model.name: {"base": base_model.local_path, "adapter": None, "max_tokens": 512}}


def test_the_worker_trains_it_and_the_page_says_the_result(api, client_in, base_model, prompts):
    created = _create(api, base_model, prompts)
    assert created.status_code == 201, created.content
    job = FineTuneJob.objects.get(id=created.json()["id"])
    assert job.grader["name"] == "digits" and created.json()["grader"]["type"] == "python"
    train_tasks.job_run(str(job.id))
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    points = list(MetricPoint.objects.filter(job=job).order_by("step"))
    assert len(points) == 16 and all("reward" in p.extra for p in points)
    assert points[-1].extra["reward"] > points[0].extra["reward"] + 0.2
    assert any("eval_reward" in p.extra for p in points)
    page = client_in.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="score-chart"' in page and "Evaluation: start vs adapted" in page
    assert "held-out prompts your grader scores the adapted model" in page
    assert any(f'<td data-label="Prompt">{q}</td>' in page for q in QUESTIONS)  # the answers, by prompt
    openai_job = bearer_client(job.owner).get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}").json()
    events = bearer_client(job.owner).get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/events?limit=100").json()["data"]
    steps = [e["data"] for e in events if e["type"] == "metrics"]
    assert len(steps) == 16 and all("train_reward_mean" in d and "kl" in d for d in steps)
    assert any("valid_reward_mean" in d for d in steps)
    method = openai_job["method"]
    assert method["type"] == "reinforcement" and method["reinforcement"]["grader"]["name"] == "digits"
    assert method["reinforcement"]["hyperparameters"]["compute_multiplier"] == 2.0


def test_the_official_client_creates_one(user, base_model, prompts):
    import httpx2
    import openai
    from django.core.handlers.wsgi import WSGIHandler

    http = httpx2.Client(transport=httpx2.WSGITransport(app=WSGIHandler()), base_url="http://testserver")
    client = openai.OpenAI(
        base_url="http://testserver/v1", api_key=bearer_client(user).raw_key, http_client=http, max_retries=0
    )
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = client.fine_tuning.jobs.create(
            model=base_model.name,
            training_file=f"file-{prompts.id.hex}",
            method={
                "type": "reinforcement",
                "reinforcement": {
                    "grader": DIGITS,
                    "hyperparameters": {"n_epochs": 1, "batch_size": 4, "compute_multiplier": 1.5, "eval_interval": 5},
                },
            },
        )
        assert job.method.type == "reinforcement" and job.method.reinforcement.grader.name == "digits"
        stored = FineTuneJob.objects.get(id=job.id.removeprefix("ftjob-"))
        assert (stored.config["group_size"], stored.config["eval_every"]) == (6, 5)
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(
                model=base_model.name,
                training_file=f"file-{prompts.id.hex}",
                method={"type": "reinforcement", "reinforcement": {"grader": {**DIGITS, "type": "nope"}}},
            )
        assert caught.value.param == "method.reinforcement.grader.type"


def test_the_estimate_counts_the_prompts_and_the_sampling(user, base_model, prompts, tmp_path):
    """The plan's estimate of a reinforcement job reads its prompts' token lengths (through the chat template with
    the generation prompt) and counts the sampling: the cache of group_size x batch_size sequences of the longest
    prompt + max_answer_tokens, and a time that grows with the group."""
    import shutil

    from jobs.base_models.services import base_model_register
    from jobs.datasets.token_profiles import dataset_token_report
    from jobs.training.plan import job_estimate
    from tests.factories import count_tokens
    from worker.config import TrainConfig
    from worker.estimate import MIB, compute_bytes

    count_tokens()
    config = TrainConfig(**FAST)
    report, _ = dataset_token_report(dataset=prompts, model_path=base_model.path, max_length=64, answer_tokens=6)
    assert report is not None and report.is_prompts and report.room == 58
    est = job_estimate(owner=user, dataset=prompts, base_model=base_model, config=config, fleet=[])
    # Tiny Llama: 2 layers, 2 key/value heads of 16.
    cache = 4 * 8 * (max(report.lengths) + 6) * 2 * 2 * 32 * compute_bytes(config, "cpu") / MIB
    assert est.breakdown["kv_cache"] == pytest.approx(cache)
    assert est.lengths_known and est.seconds
    bigger = job_estimate(
        owner=user, dataset=prompts, base_model=base_model, config=TrainConfig(**{**FAST, "group_size": 16}), fleet=[]
    )
    assert bigger.seconds > 1.5 * est.seconds and bigger.memory_mb > est.memory_mb
    judge = {"type": "score_model", "name": "j", "model": base_model.name, "input": [{"role": "user", "content": "x"}]}
    own = job_estimate(owner=user, dataset=prompts, base_model=base_model, config=config, fleet=[], grader=judge)
    assert "judge_models" not in own.breakdown  # the training model judges, adapter off
    other = base_model_register(name="tiny-copy", path=str(shutil.copytree(base_model.path, tmp_path / "copy")))
    judge = {**judge, "model": other.name}  # another model: loaded beside the training model
    copy = job_estimate(owner=user, dataset=prompts, base_model=base_model, config=config, fleet=[], grader=judge)
    assert copy.breakdown["judge_models"] > 0 and copy.memory_mb > own.memory_mb
