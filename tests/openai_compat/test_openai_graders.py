"""Graders over the official `openai` client (`client.fine_tuning.alpha.graders.validate / run`, through the real
Django app in process) and over REST: OpenAI's shapes, refusals naming the JSON path, python graders in their
sandbox under per-user slots, and a model grader judged by the real infer task."""

from __future__ import annotations

import httpx2
import openai
import pytest
from django.core.handlers.wsgi import WSGIHandler

from jobs.arena.models import ChatAnswer
from jobs.training.graders import grader_slot
from tests.factories import bearer_client

EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_json.answer}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
CODE = {
    "type": "python",
    "name": "length",
    "source": "def grade(sample, item):\n    return min(1.0, len(sample['output_text']) / 20)\n",
}
MULTI = {
    "type": "multi",
    "name": "answer and length",
    "graders": {"exact": EXACT, "length": CODE},
    "calculate_output": "0.75 * exact + 0.25 * length",
}


@pytest.fixture
def client(user):
    key = bearer_client(user).raw_key
    transport = httpx2.WSGITransport(app=WSGIHandler())
    http = httpx2.Client(transport=transport, base_url="http://testserver")
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)


def test_validate_and_run_with_the_official_client(client):
    checked = client.fine_tuning.alpha.graders.validate(grader=MULTI)
    assert checked.grader is not None
    run = client.fine_tuning.alpha.graders.run(grader=MULTI, model_sample='{"answer": "42"}', item={"answer": "42"})
    assert run.sub_rewards == {"exact": 1.0, "length": 0.8}
    assert run.reward == pytest.approx(0.75 + 0.25 * 0.8)
    assert run.metadata.name == "answer and length" and run.metadata.type == "multi"
    assert run.metadata.errors.python_grader_runtime_error is False
    assert run.metadata.errors.invalid_variable_error is False
    missing = client.fine_tuning.alpha.graders.run(grader=MULTI, model_sample="42", item={"answer": "42"})
    assert missing.reward == pytest.approx(0.25 * 0.1) and missing.metadata.errors.invalid_variable_error is True


def test_refusals_name_the_json_path(client):
    bad = {**MULTI, "graders": {"exact": {**EXACT, "operation": "equals"}, "length": CODE}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.alpha.graders.validate(grader=bad)
    assert caught.value.status_code == 400 and caught.value.param == "grader.graders.exact.operation"
    broken = {**CODE, "source": "def grade(sample, item)\n    return 1\n"}
    with pytest.raises(openai.BadRequestError, match="SyntaxError") as caught:
        client.fine_tuning.alpha.graders.validate(grader=broken)
    assert caught.value.param == "grader.source"
    judge = {"type": "score_model", "name": "j", "model": "no-such-model", "input": [{"role": "user", "content": "x"}]}
    with pytest.raises(openai.BadRequestError, match="no model named 'no-such-model'") as caught:
        client.fine_tuning.alpha.graders.run(grader=judge, model_sample="x")
    assert caught.value.param == "grader.model"
    with pytest.raises(openai.BadRequestError, match="Missing required parameter: 'model_sample'"):
        client.post("/fine_tuning/alpha/graders/run", body={"grader": EXACT}, cast_to=object)


def test_a_hostile_python_grader_scores_zero_and_says_why(api):
    hostile = {**CODE, "source": "def grade(sample, item):\n    return len(open('/etc/passwd').read())\n"}
    response = api.post("/api/v1/graders/run/", {"grader": hostile, "model_sample": "x"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["reward"] == 0.0 and body["metadata"]["errors"]["python_grader_runtime_error"] is True
    assert (
        "/etc/passwd is outside the grader's folder"
        in body["metadata"]["errors"]["python_grader_runtime_error_details"]
    )
    details = body["metadata"]["errors"]["python_grader_runtime_error_details"]
    assert details.startswith("length: PermissionError") and body["metadata"]["problems"] == [details]


def test_python_graders_are_bounded_per_user(api, client, user, settings, real_redis):
    settings.GRADER_CHILDREN_PER_USER = 1
    with grader_slot(user, 30):  # one grader of alice's is running
        response = api.post("/api/v1/graders/run/", {"grader": CODE, "model_sample": "x"}, format="json")
        assert response.status_code == 429 and int(response["Retry-After"]) >= 1
        assert "you already have 1 python graders running" in response.json()["error"]["message"]
        with pytest.raises(openai.RateLimitError, match="you already have 1 python graders running"):
            client.fine_tuning.alpha.graders.run(grader=CODE, model_sample="x")
        plain = api.post("/api/v1/graders/run/", {"grader": EXACT, "model_sample": "x", "item": {}}, format="json")
        assert plain.status_code == 200  # no python: no child, no slot
    assert api.post("/api/v1/graders/run/", {"grader": CODE, "model_sample": "x"}, format="json").status_code == 200


def test_a_model_grader_is_judged_by_the_infer_task(api, user, base_model, transactional_db, monkeypatch):
    from jobs.arena import tasks as chat_tasks

    monkeypatch.setattr("jobs.common.queue.send", lambda name, *args: chat_tasks.chat_answer(*args))
    judge = {
        "type": "label_model",
        "name": "judge",
        "model": "tiny-llama",
        "input": [{"role": "user", "content": "Is this polite? {{sample.output_text}} Answer yes or no."}],
        "labels": ["yes", "no"],
        "passing_labels": ["yes"],
    }
    response = api.post("/api/v1/graders/run/", {"grader": judge, "model_sample": "Thank you!"}, format="json")
    assert response.status_code == 200, response.content
    asked = ChatAnswer.objects.get(session__owner=user)
    assert asked.messages == [{"role": "user", "content": "Is this polite? Thank you! Answer yes or no."}]
    assert asked.state == ChatAnswer.State.DONE
    body = response.json()
    label = asked.text.strip().strip(".\"'").lower()
    if label in ("yes", "no"):  # a random tiny model rarely says a label; when it does, it is scored
        assert body["reward"] == (1.0 if label == "yes" else 0.0)
    else:
        assert body["metadata"]["errors"]["model_grader_parse_error"] is True
        assert repr(asked.text[:200]) in body["metadata"]["problems"][0]
