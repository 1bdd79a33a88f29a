"""Chat is bounded: messages, characters, max tokens and answers in flight per user are capped (400 or
429 naming the setting, nothing stored), and a history longer than the model's context is cut from the
oldest end, with a note in the answer."""

from unittest import mock

import pytest

from jobs.arena import tasks as chat_tasks
from jobs.arena.models import ChatAnswer
from jobs.arena.services import chat_completion_create
from jobs.common import events as common_events
from tests.arena.test_compare_votes import finished_job
from worker.config import GenerationConfig
from worker.inference import fit_conversation
from worker.modeling import cached_tokenizer, context_length


def test_a_long_conversation_is_cut_from_the_oldest_end(tiny_llama):
    tok, gen = cached_tokenizer(str(tiny_llama)), GenerationConfig(max_new_tokens=16, system_prompt="be brief")
    history = []
    for i in range(40):
        history += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": f"answer {i}"}]
    history.append({"role": "user", "content": "the last question"})
    fitted = fit_conversation(tok, history, gen, context=128)
    assert fitted.dropped_messages > 0 and fitted.messages[-1]["content"] == "the last question"
    assert fitted.messages[0]["role"] == "user" and fitted.messages == history[-len(fitted.messages) :]
    assert "oldest message(s) were left out" in fitted.note(128)
    huge = fit_conversation(tok, [{"role": "user", "content": "word " * 2000 + "END"}], gen, context=128)
    assert huge.cut_chars > 0 and huge.messages[-1]["content"].endswith("END") and "was cut" in huge.note(128)
    short = fit_conversation(tok, history[-3:], gen, context=4096)
    assert short.messages == history[-3:] and short.note(4096) == ""


def test_the_answer_says_what_was_left_out(user, base_model, tiny_llama):
    messages = []
    for i in range(60):
        messages += [
            {"role": "user", "content": f"tell me about colour {i} please"},
            {"role": "assistant", "content": f"colour {i} is a colour"},
        ]
    messages.append({"role": "user", "content": "and now?"})
    answer = chat_completion_create(
        owner=user, base=base_model, job=None, messages=messages, generation=GenerationConfig(max_new_tokens=8)
    )
    pool = mock.Mock()
    pool.generate_many.side_effect = lambda path, requests, gen, on_text, should_stop: ["ok"]
    published = []
    with (
        mock.patch.object(chat_tasks, "model_pool", lambda: pool),
        mock.patch.object(common_events, "publish", lambda channel, kind, data: published.append((kind, data))),
    ):
        assert chat_tasks.chat_answer(str(answer.id)) == "done"
    sent = pool.generate_many.call_args.args[1][0][0]
    assert len(sent) < len(messages) and sent[-1] == {"role": "user", "content": "and now?"}
    answer.refresh_from_db()
    context = context_length(str(tiny_llama))
    assert answer.note.startswith(f"To fit the model's context of {context:,} tokens, the ")
    assert [d.get("note") for k, d in published if k == "done"] == [answer.note]


def test_requests_past_the_bounds_are_refused_and_nothing_is_stored(
    settings, user, base_model, api, page_api, django_capture_on_commit_callbacks
):
    job = finished_job(user, base_model, "colours")
    settings.CHAT_MAX_NEW_TOKENS, settings.CHAT_MAX_CHARS, settings.CHAT_MAX_MESSAGES = 64, 100, 3
    url = f"/api/v1/jobs/{job.id}/chat/"
    response = page_api.post(url, {"prompt": "hi", "max_new_tokens": 65}, format="json")
    assert response.status_code == 400 and response.json()["error"]["field"] == "max_new_tokens"
    assert "CHAT_MAX_NEW_TOKENS" in response.json()["error"]["message"]
    response = page_api.post(url, {"prompt": "x" * 101, "max_new_tokens": 16}, format="json")
    assert response.status_code == 400 and "CHAT_MAX_CHARS" in response.json()["error"]["message"]
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "a"}] * 4}
    response = api.post("/v1/chat/completions", body, format="json")
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "a"}], "max_tokens": 65}
    response = api.post("/v1/chat/completions", body, format="json")
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens"
    assert not ChatAnswer.objects.exists()

    settings.CHAT_MAX_PENDING_PER_USER = 3
    with mock.patch("jobs.arena.tasks.chat_round.delay"), django_capture_on_commit_callbacks(execute=True):
        one = page_api.post(url, {"prompt": "one", "max_new_tokens": 16}, format="json")
        assert one.status_code == 201, one.json()  # two answers in flight
        busy = page_api.post(url, {"prompt": "two", "max_new_tokens": 16}, format="json")
    assert busy.status_code == 429 and busy.json()["error"]["field"] == "answers"
    assert "CHAT_MAX_PENDING_PER_USER" in busy.json()["error"]["message"]
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "a"}], "max_tokens": 8}
    ChatAnswer.objects.update(state=ChatAnswer.State.STREAMING)
    ChatAnswer.objects.create(session=ChatAnswer.objects.first().session, side="base", prompt="x")
    response = api.post("/v1/chat/completions", body, format="json")
    assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limit_exceeded"
    assert ChatAnswer.objects.count() == 3


@pytest.mark.parametrize("n", [1])
def test_bounds_leave_ordinary_requests_alone(n, user, base_model, page_api, django_capture_on_commit_callbacks):
    job = finished_job(user, base_model, "colours")
    with mock.patch("jobs.arena.tasks.chat_round.delay") as delay, django_capture_on_commit_callbacks(execute=True):
        response = page_api.post(
            f"/api/v1/jobs/{job.id}/chat/", {"prompt": "colour 1", "max_new_tokens": 1024}, format="json"
        )
    assert response.status_code == 201 and delay.call_count == n
