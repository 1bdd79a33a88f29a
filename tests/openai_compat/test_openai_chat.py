"""/v1/chat/completions: validation, the answer handed to the infer worker, whole and streamed replies.

The worker side is simulated by a fake `common_events.follow` that plays the infer worker's Redis events."""

import json
from unittest import mock

import pytest
from asgiref.sync import sync_to_async

from jobs.arena import tasks as chat_tasks
from jobs.arena.models import ChatAnswer, ChatSession
from jobs.common import events as common_events
from jobs.training.models import FineTuneJob
from tests.openai_compat.test_openai_files_jobs import assert_error, create_job, succeed

PIECES = ['{"answer', '": "', 'blue"}']


@pytest.fixture
def fake_worker(monkeypatch):
    """Replace the Redis subscription by the events an infer worker would publish for the new answer."""
    seen = {}

    async def follow(channel, replay, on_message):
        yield ": connected\n\n"
        await replay()
        answer = await sync_to_async(lambda: ChatAnswer.objects.select_related("session").latest("created"))()
        seen.update(channel=channel, answer=answer)
        script = [("start", {})] + [("token", {"text": p}) for p in PIECES] + [("done", {"text": "".join(PIECES)})]
        other = {"answer": "someone-else", "text": "zzz"}
        for kind, data in [("token", other)] + script:
            data = {"answer": data.get("answer", str(answer.id)), "side": answer.side, **data}
            chunks, done = on_message(kind, data)
            for chunk in chunks:
                yield chunk
            if done:
                return

    monkeypatch.setattr("jobs.common.events.follow", follow)
    return seen


def post(api, body, **extra):
    return api.post("/v1/chat/completions", json.dumps(body), content_type="application/json", **extra)


def test_non_streaming_answer_from_a_base_model(api, user, base_model, fake_worker):
    messages = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "colour 2"}]
    response = post(api, {"model": "tiny-llama", "messages": messages, "temperature": 0, "max_tokens": 12, "seed": 3})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny-llama"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": '{"answer": "blue"}', "refusal": None}
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    usage = body["usage"]
    assert (
        usage["completion_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )
    answer = fake_worker["answer"]
    session = answer.session
    assert fake_worker["channel"] == f"chat:{session.id}"
    assert session.owner == user and session.job is None and session.base_model == base_model
    assert answer.side == "base" and answer.messages == messages and answer.prompt == "colour 2"
    assert answer.settings["max_new_tokens"] == 12 and answer.settings["seed"] == 3


def test_streaming_answer_from_a_fine_tuned_model(api, base_model, dataset, fake_worker):
    create_job(api, dataset, suffix="c")
    job = succeed(FineTuneJob.objects.get())
    model = f"ft:tiny-llama:c:{job.short_id}"
    response = post(
        api,
        {
            "model": model,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "colour 2"}]}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    raw = b"".join(response).decode()
    lines = [line for line in raw.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == model for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == '{"answer": "blue"}'
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    answer = fake_worker["answer"]
    assert answer.side == "adapter" and answer.session.job_id == job.id


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
        ({"model": "ft:tiny-llama:alice:deadbeef", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
        ({"model": "tiny-llama", "messages": []}, 400, "messages"),
        ({"model": "tiny-llama", "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
        ({"model": "tiny-llama", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages"),
        (
            {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "temperature": 9},
            400,
            "temperature",
        ),
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "tools": []}, 400, "tools"),
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
    ],
)
def test_completion_errors(api, base_model, body, status, param):
    assert_error(post(api, body), status, param=param)
    assert not ChatSession.objects.exists()


def test_bad_json_and_method(api, base_model):
    response = api.post("/v1/chat/completions", b"{oops", content_type="application/json")
    assert_error(response, 400, code="invalid_json")
    assert_error(api.get("/v1/chat/completions"), 405)


def test_another_users_fine_tuned_model_is_unknown(api, api_bob, base_model, dataset):
    create_job(api, dataset, suffix="c")
    job = succeed(FineTuneJob.objects.get())
    response = post(
        api_bob, {"model": f"ft:tiny-llama:c:{job.short_id}", "messages": [{"role": "user", "content": "x"}]}
    )
    assert_error(response, 404, param="model", code="model_not_found")


def test_completion_is_handed_to_the_infer_queue_on_commit(
    api, base_model, django_capture_on_commit_callbacks, fake_worker
):
    with mock.patch("jobs.arena.tasks.chat_answer.delay") as delay, django_capture_on_commit_callbacks(execute=True):
        post(api, {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]})
    delay.assert_called_once_with(str(fake_worker["answer"].id))


def test_the_task_answers_a_base_only_session_with_the_full_history(user, base_model, monkeypatch):
    from jobs.arena.services import chat_completion_create
    from worker.config import GenerationConfig

    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    answer = chat_completion_create(
        owner=user, base=base_model, job=None, messages=messages, generation=GenerationConfig(max_new_tokens=4)
    )
    pool = mock.Mock()
    pool.generate_many.side_effect = lambda path, requests, gen, on_text, should_stop: on_text(0, "ok") or ["ok"]
    monkeypatch.setattr(chat_tasks, "model_pool", lambda: pool)
    published = []
    monkeypatch.setattr(common_events, "publish", lambda channel, kind, data: published.append((channel, kind, data)))
    assert chat_tasks.chat_answer(str(answer.id)) == "done"
    (path, requests, gen) = pool.generate_many.call_args.args
    assert path == base_model.path and requests == [(messages, None)] and gen.max_new_tokens == 4
    assert [k for _, k, _ in published] == ["start", "token", "done"]
    assert all(c == f"chat:{answer.session_id}" for c, _, _ in published)
    answer.refresh_from_db()
    assert answer.state == "done" and answer.text == "ok"
