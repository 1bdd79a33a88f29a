"""Trying a grader before training (POST /api/v1/graders/try/, the New job form's "Try on a few rows"): the start
model answers the first prompts of the owner's prompts dataset through the real infer task and each answer is
scored; every bad input is a 400 naming the field, before any answer is asked for."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.arena.models import ChatAnswer
from jobs.datasets import services as dataset_services

QUESTIONS = ["what is two plus two", "name a colour", "say yes", "count to three"]
LENGTH = {
    "type": "python",
    "name": "length",
    "source": "def grade(sample, item) -> float:\n    return min(1.0, len(sample['output_text']) / 1000)\n",
}
EQUALS = {
    "type": "string_check",
    "name": "equals_answer",
    "operation": "eq",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
}
URL = "/api/v1/graders/try/"


def prompts_of(owner, name="prompts.jsonl"):
    rows = [{"messages": [{"role": "user", "content": q}], "answer": str(i)} for i, q in enumerate(QUESTIONS)]
    upload = SimpleUploadedFile(name, "".join(json.dumps(r) + "\n" for r in rows).encode())
    return dataset_services.dataset_create(owner=owner, upload=upload)


@pytest.fixture
def prompts(user):
    return prompts_of(user)


def test_the_start_model_answers_the_first_prompts_and_each_answer_is_scored(
    page_api, user, base_model, transactional_db, monkeypatch
):
    from jobs.arena import tasks as chat_tasks

    monkeypatch.setattr("jobs.common.queue.send", lambda name, *args: chat_tasks.chat_answer(*args))
    multi = {
        "type": "multi",
        "name": "combined",
        "graders": {"length": LENGTH, "exact": EQUALS},
        "calculate_output": "length + exact",
    }
    body = {
        "dataset": str(prompts_of(user).id),
        "base_model": str(base_model.id),
        "start_from": "",
        "grader": multi,
        "rows": 2,
        "max_answer_tokens": 8,
    }
    response = page_api.post(URL, body, format="json")
    assert response.status_code == 200, response.content
    rows = response.json()["rows"]
    asked = list(ChatAnswer.objects.filter(session__owner=user).order_by("created"))
    assert [a.prompt for a in asked] == QUESTIONS[:2] and all(a.state == ChatAnswer.State.DONE for a in asked)
    assert all(a.settings["temperature"] == 1.0 and a.settings["max_new_tokens"] == 8 for a in asked)
    assert [r["prompt"] for r in rows] == QUESTIONS[:2]
    for i, (row, answer) in enumerate(zip(rows, asked, strict=True)):
        length = min(1.0, len(answer.text) / 1000)
        exact = 1.0 if answer.text == str(i) else 0.0
        assert row["answer"] == answer.text and row["problems"] == []
        assert row["scores"] == pytest.approx({"length": length, "exact": exact})
        assert row["reward"] == pytest.approx(length + exact)


def test_an_answer_that_does_not_come_in_time_is_said_and_stopped(api, user, base_model, prompts, monkeypatch):
    monkeypatch.setattr("jobs.common.queue.send", lambda name, *args: None)  # no infer worker picks it up
    monkeypatch.setattr("jobs.arena.graders.TRY_SECONDS", 0.3)
    body = {"dataset": str(prompts.id), "base_model": str(base_model.id), "grader": EQUALS, "rows": 1}
    response = api.post(URL, body, format="json")
    assert response.status_code == 200, response.content
    [row] = response.json()["rows"]
    assert row["reward"] is None and row["problems"] == ["the model did not answer: no answer within 0.3 s"]
    assert ChatAnswer.objects.get(session__owner=user).stopped  # it never starts later


def test_bad_inputs_are_refused_with_the_field_before_any_answer_is_asked(
    api, user, other_user, base_model, prompts, chat_file, monkeypatch
):
    def never(*args):
        raise AssertionError("nothing may be sent to the infer worker")

    monkeypatch.setattr("jobs.common.queue.send", never)
    chats = dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("c.jsonl", chat_file.read_bytes()))
    bobs = prompts_of(other_user, "bobs.jsonl")
    good = {"dataset": str(prompts.id), "base_model": str(base_model.id), "grader": EQUALS}
    judge = {"type": "score_model", "name": "j", "model": base_model.name, "input": [{"role": "user", "content": "x"}]}
    cases = [
        ({"dataset": "0" * 8}, "dataset", "you have no such dataset"),
        ({"dataset": str(bobs.id)}, "dataset", "you have no such dataset"),
        ({"dataset": str(chats.id)}, "dataset", "graders are tried on prompts to reward"),
        ({"grader": {**EQUALS, "operation": "equals"}}, "grader.operation", "must be one of eq, ne, like, ilike"),
        ({"grader": {**judge, "model": "gone"}}, "grader.model", "there is no model named 'gone'"),
        ({"base_model": ""}, "base_model", "pick the base model"),
        ({"base_model": str(prompts.id)}, "base_model", "no such base model"),
        ({"start_from": str(prompts.id)}, "start_from", "succeeded jobs with an adapter"),
    ]
    for change, field, message in cases:
        response = api.post(URL, {**good, **change}, format="json")
        assert response.status_code == 400, (change, response.content)
        error = response.json()["error"]
        assert error["field"] == field and message in error["message"], (change, error)
    for change, field in [({"rows": 6}, "rows"), ({"rows": 0}, "rows"), ({"grader2": 1}, "grader2")]:
        response = api.post(URL, {**good, **change}, format="json")
        assert response.status_code == 400 and field in response.json(), (change, response.content)
    assert not ChatAnswer.objects.exists()


def test_the_job_form_offers_the_builder_with_the_datasets_fields_for_prompts_only(client_in, prompts, dataset):
    html = client_in.get(f"/jobs/new/?dataset={prompts.id}").content.decode()
    assert '<section class="reward-builder" id="reward-builder"' in html and "reward_builder.js" in html
    builder = html[html.index('id="reward-builder"') : html.index("</section>", html.index('id="reward-builder"'))]
    assert "hidden" not in builder.split(">", 1)[0] and "The answer equals a field of my data" in builder
    kinds = json.loads(html.split('<script id="dataset-kinds" type="application/json">')[1].split("</script>")[0])
    assert kinds[str(prompts.id)]["fields"] == ["answer"] and kinds[str(dataset.id)]["fields"] == []
    chats = client_in.get(f"/jobs/new/?dataset={dataset.id}").content.decode()
    assert chats.split('id="reward-builder"', 1)[1].split(">", 1)[0].count(" hidden") == 1
