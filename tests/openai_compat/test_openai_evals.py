"""OpenAI's Evals API over the official `openai` client (`client.evals`, `client.evals.runs`, `.output_items`),
through the real Django app in process: evals with graders as testing criteria, runs whose right result is known
(given answers; a model whose answers the test chooses, asked through the real infer task; the real tiny model),
refusals naming the JSON path, another user's eval as missing, and cancel."""

from __future__ import annotations

import httpx2
import openai
import pytest
from django.core.handlers.wsgi import WSGIHandler
from openai.types import EvalCreateResponse
from openai.types.evals import RunCreateResponse, RunRetrieveResponse

from jobs.arena import tasks as chat_tasks
from jobs.benchmarks import tasks as benchmark_tasks
from jobs.benchmarks.models import EvalRun
from jobs.common import queue
from tests.factories import bearer_client

EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
SIMILAR = {
    "type": "text_similarity",
    "name": "similar",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
    "pass_threshold": 0.5,
}
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}}}
TEMPLATE = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "{{item.question}}"}]


def _client(owner) -> openai.OpenAI:
    key = bearer_client(owner).raw_key
    http = httpx2.Client(transport=httpx2.WSGITransport(app=WSGIHandler()), base_url="http://testserver")
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)


@pytest.fixture
def client(user):
    return _client(user)


class CapitalPool:
    """The infer worker's model pool: it knows one capital, and says "Paris" whatever it is asked."""

    def __init__(self):
        self.asked = []

    def generate_many(self, base_path, requests, gen, should_stop=None, on_text=None):
        self.asked += [messages for messages, _adapter in requests]
        return ["Paris" for _ in requests]


@pytest.fixture
def run_here(monkeypatch, real_redis, settings):
    """Tasks run at once, in this process."""
    settings.CHAT_COMPLETION_TIMEOUT = 20
    tasks = {queue.CHAT_ANSWER: chat_tasks.chat_answer, queue.EVAL_RUN: benchmark_tasks.eval_run}
    monkeypatch.setattr("jobs.common.queue.send", lambda name, *args: tasks[name](*args))


def test_given_answers_are_graded_with_known_counts(client, transactional_db, run_here):
    created = client.evals.create(
        name="capitals",
        data_source_config={"type": "custom", "item_schema": SCHEMA, "include_sample_schema": True},
        testing_criteria=[EXACT, SIMILAR],
        metadata={"team": "geo"},
    )
    assert isinstance(created, EvalCreateResponse) and created.id.startswith("eval_")
    assert [c.type for c in created.testing_criteria] == ["string_check", "text_similarity"]
    assert created.data_source_config.type == "custom" and created.metadata == {"team": "geo"}
    rows = [
        {"item": {"answer": "Paris"}, "sample": {"output_text": "Paris"}},  # both pass
        {"item": {"answer": "Paris"}, "sample": {"output_text": "Pariss"}},  # exact fails, similar passes
        {"item": {"answer": "Rome"}, "sample": {"output_text": "Oslo"}},  # both fail
        {"item": {"question": "no answer"}, "sample": {"output_text": "Oslo"}},  # item.answer missing: errored
    ]
    run = client.evals.runs.create(
        created.id, name="given", data_source={"type": "jsonl", "source": {"type": "file_content", "content": rows}}
    )
    assert isinstance(run, RunCreateResponse) and run.status == "completed", run
    counts = run.result_counts
    assert (counts.total, counts.passed, counts.failed, counts.errored) == (4, 1, 2, 1)
    per = {r.testing_criteria: (r.passed, r.failed) for r in run.per_testing_criteria_results}
    assert per == {"exact": (1, 3), "similar": (2, 2)}
    assert run.report_url.endswith(f"/v1/evals/{created.id}/runs/{run.id}")
    items = client.evals.runs.output_items.list(run.id, eval_id=created.id)
    assert [i.status for i in items.data] == ["pass", "fail", "fail", "error"]
    second = items.data[1]
    assert second.sample.output[0].content == "Pariss" and second.datasource_item == {"answer": "Paris"}
    assert [(r.name, r.passed) for r in second.results] == [("exact", False), ("similar", True)]
    assert client.evals.runs.output_items.retrieve(second.id, eval_id=created.id, run_id=run.id).id == second.id
    failing = client.evals.runs.output_items.list(run.id, eval_id=created.id, status="fail")
    assert [i.datasource_item_id for i in failing.data] == [1, 2]
    # update, list, delete
    renamed = client.evals.update(created.id, name="capitals v2", metadata={"team": "maps"})
    assert renamed.name == "capitals v2" and client.evals.retrieve(created.id).metadata == {"team": "maps"}
    assert [e.id for e in client.evals.list().data] == [created.id]
    assert [r.id for r in client.evals.runs.list(created.id).data] == [run.id]
    assert client.evals.runs.delete(run.id, eval_id=created.id).deleted is True
    assert client.evals.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(created.id)


def test_a_model_answers_each_item_from_the_template(client, user, base_model, transactional_db, run_here, monkeypatch):
    pool = CapitalPool()
    monkeypatch.setattr(chat_tasks, "model_pool", lambda: pool)
    created = client.evals.create(
        data_source_config={"type": "custom", "item_schema": SCHEMA}, testing_criteria=[EXACT]
    )
    items = [
        {"item": {"question": "Capital of France?", "answer": "Paris"}},
        {"item": {"question": "Of Italy?", "answer": "Rome"}},
    ]
    data_source = {
        "type": "completions",
        "model": "tiny-llama",
        "input_messages": {"type": "template", "template": TEMPLATE},
        "source": {"type": "file_content", "content": items},
        "sampling_params": {"max_completion_tokens": 8, "temperature": 0, "seed": 1},
    }
    run = client.evals.runs.create(created.id, data_source=data_source)
    assert run.status == "completed" and run.model == "tiny-llama"
    assert (run.result_counts.passed, run.result_counts.failed, run.result_counts.errored) == (1, 1, 0)
    assert run.per_model_usage[0].invocation_count == 2
    asked = [[m["content"] for m in messages] for messages in pool.asked]
    assert [a[-1] for a in asked] == ["Capital of France?", "Of Italy?"]  # {{item.question}} filled in
    output = client.evals.runs.output_items.list(run.id, eval_id=created.id).data
    assert output[1].sample.input[1].content == "Of Italy?" and output[1].sample.output[0].content == "Paris"
    # the items from an uploaded file (prompt/completion lines are the items)
    lines = (
        b'{"prompt": "Capital of France?", "completion": "Paris"}\n{"prompt": "Of Spain?", "completion": "Madrid"}\n'
    )
    uploaded = client.files.create(file=("capitals.jsonl", lines), purpose="fine-tune")
    from_file = client.evals.runs.create(
        created.id,
        data_source={
            **data_source,
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.prompt}}"}]},
            "source": {"type": "file_id", "id": uploaded.id},
        },
    )
    # EXACT compares with item.answer, which these items lack: each one is errored, and says why
    assert (from_file.result_counts.total, from_file.result_counts.errored) == (2, 2)
    graded = client.evals.runs.output_items.list(from_file.id, eval_id=created.id).data[0]
    assert "item has no 'answer'" in graded.results[0].problems[0]


def test_a_run_on_the_tiny_model(client, base_model, transactional_db, run_here):
    never = {**EXACT, "name": "never", "reference": "{{item.impossible}}", "operation": "ne"}
    created = client.evals.create(data_source_config={"type": "custom", "item_schema": {}}, testing_criteria=[never])
    run = client.evals.runs.create(
        created.id,
        data_source={
            "type": "completions",
            "model": "tiny-llama",
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "Say {{item.word}}"}]},
            "source": {"type": "file_content", "content": [{"item": {"word": "hi", "impossible": "\u2603" * 40}}]},
            "sampling_params": {"max_completion_tokens": 3},
        },
    )
    assert isinstance(client.evals.runs.retrieve(run.id, eval_id=created.id), RunRetrieveResponse)
    assert run.status == "completed" and run.result_counts.passed == 1, run
    item = client.evals.runs.output_items.list(run.id, eval_id=created.id).data[0]
    assert item.sample.output[0].content and item.results[0].score == 1.0


def test_refusals_name_the_path_and_other_users_see_nothing(client, user, other_user, base_model, db):
    cases = [
        ({"testing_criteria": [{**EXACT, "operation": "equals"}]}, "testing_criteria.0.operation"),
        ({"data_source_config": {"type": "logs"}}, "data_source_config.type"),
        ({"testing_criteria": [{**EXACT, "type": "score_model", "model": "nope", "input": []}]}, None),
        ({"testing_criteria": []}, "testing_criteria"),
    ]
    for change, param in cases:
        body = {"data_source_config": {"type": "custom", "item_schema": SCHEMA}, "testing_criteria": [EXACT], **change}
        with pytest.raises(openai.BadRequestError) as caught:
            client.evals.create(**body)
        assert caught.value.status_code == 400
        assert caught.value.param == param or param is None and caught.value.param.startswith("testing_criteria.0")
    created = client.evals.create(
        data_source_config={"type": "custom", "item_schema": SCHEMA}, testing_criteria=[EXACT]
    )
    template = {"type": "template", "template": TEMPLATE}
    content = {"type": "file_content", "content": [{"item": {"answer": "x"}}]}
    given = {"item": {"answer": "x"}, "sample": {"output_text": "x"}}
    bad_runs = [
        (
            {"type": "completions", "model": "no-such-model", "input_messages": template, "source": content},
            "data_source.model",
        ),
        (
            {"type": "jsonl", "source": {"type": "file_content", "content": [{"item": {}}]}},
            "data_source.source.content.0.sample.output_text",
        ),
        ({"type": "responses", "source": content}, "data_source.type"),
        (
            {
                "type": "completions",
                "model": "tiny-llama",
                "input_messages": template,
                "source": {"type": "file_id", "id": "file-00"},
            },
            "data_source.source.id",
        ),
    ]
    for data_source, param in bad_runs:
        with pytest.raises(openai.BadRequestError) as caught:
            client.evals.runs.create(created.id, data_source=data_source)
        assert caught.value.param == param, caught.value
    # a run stays queued here (nothing runs the worker): it can be canceled, once
    run = client.evals.runs.create(
        created.id,
        data_source={"type": "completions", "model": "tiny-llama", "input_messages": template, "source": content},
    )
    assert run.status == "queued"
    canceled = client.evals.runs.cancel(run.id, eval_id=created.id)
    assert canceled.status == "canceled" and EvalRun.objects.get().status == "canceled"
    with pytest.raises(openai.ConflictError):
        client.evals.runs.cancel(run.id, eval_id=created.id)
    again = client.evals.runs.create(
        created.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": [given]}}
    )
    cancel = client.post(f"/evals/{created.id}/runs/{again.id}", cast_to=object)  # OpenAI's documented cancel
    assert cancel["status"] == "canceled" and cancel["result_counts"]["total"] == 1
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.output_items.retrieve("outputitem_x-0", eval_id=created.id, run_id=run.id)
    bob = _client(other_user)
    for call in (
        lambda: bob.evals.retrieve(created.id),
        lambda: bob.evals.delete(created.id),
        lambda: bob.evals.runs.retrieve(run.id, eval_id=created.id),
        lambda: bob.evals.runs.output_items.list(run.id, eval_id=created.id),
        lambda: bob.evals.runs.create(created.id, data_source={"type": "jsonl", "source": content}),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert bob.evals.list().data == []


def test_a_lost_run_is_swept_and_goes_on_and_a_run_without_its_claim_writes_nothing(user, transactional_db, run_here):
    from jobs.benchmarks import evals
    from jobs.benchmarks.models import Eval
    from jobs.common.leased import lease_from_now

    evaluation = Eval.objects.create(owner=user, testing_criteria=[EXACT])
    rows = [{"item": {"answer": a}, "sample": {"output_text": "Paris"}} for a in ("Paris", "Rome")]
    done_before = {"input": [], "text": "kept", "tokens": 0, "error": "", "results": []}
    run = EvalRun.objects.create(
        eval=evaluation,
        owner=user,
        data_source={"type": "jsonl", "source": {"type": "file_content"}},
        items=rows,
        outputs=[done_before],
        status=EvalRun.Status.IN_PROGRESS,
        attempts=1,
        claim="dead",
        lease_until=lease_from_now(-5),  # its worker died after the first item
    )
    assert benchmark_tasks.eval_sweep() == 1  # queued again, and run here at once
    run.refresh_from_db()
    assert run.status == EvalRun.Status.COMPLETED and run.attempts == 2
    assert run.outputs[0] == done_before and run.outputs[1]["results"][0]["passed"] is False  # not graded again
    stolen = EvalRun.objects.create(eval=evaluation, owner=user, data_source={"type": "jsonl"}, items=rows)
    token = evals.eval_run_claim(stolen)
    assert token is not None and evals.eval_run_claim(stolen) is None  # one run at a time
    EvalRun.objects.filter(id=stolen.id).update(claim="another")
    assert evals.eval_run_work(stolen, token) == "lost"
    stolen.refresh_from_db()
    assert stolen.status == EvalRun.Status.IN_PROGRESS and stolen.outputs == []
