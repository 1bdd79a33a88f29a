"""The stop button: a streaming answer ends at its next token, a queued one never starts, a later
question is not affected. The flag goes through a real Redis; the infer task runs in-process."""

from unittest import mock

from jobs.arena import live as chat_live
from jobs.arena import services as chat_services
from jobs.arena import tasks as chat_tasks
from jobs.arena.models import ChatAnswer
from jobs.common import events as common_events
from tests.arena.test_compare_votes import finished_job
from worker.config import GenerationConfig
from worker.modeling import load_tokenizer


def ask(user, job, django_capture_on_commit_callbacks, tokens=40):
    with mock.patch("jobs.arena.tasks.chat_round.delay"), django_capture_on_commit_callbacks(execute=True):
        session, answers = chat_services.chat_ask(
            owner=user, job=job, prompt="colour 1", generation=GenerationConfig(max_new_tokens=tokens)
        )
    return session, {("base" if a.job_id is None else "adapter"): a for a in answers}


def test_stop_ends_a_streaming_answer_and_skips_queued_ones(
    real_redis, user, base_model, django_capture_on_commit_callbacks
):
    job = finished_job(user, base_model, "colours")
    session, answers = ask(user, job, django_capture_on_commit_callbacks)
    # Unstopped, the tiny model talks until max_new_tokens.
    assert chat_tasks.chat_answer(str(answers["base"].id)) == "done"
    full = ChatAnswer.objects.get(id=answers["base"].id).text

    session2, answers2 = ask(user, job, django_capture_on_commit_callbacks)
    chat_live.chat_stop_request(session2.id)  # as if pressed while the base answer was streaming
    assert chat_tasks.chat_answer(str(answers2["base"].id)) == "stopped"
    stopped = ChatAnswer.objects.get(id=answers2["base"].id)
    assert stopped.state == "done" and stopped.stopped and len(stopped.text) < len(full)
    assert full.startswith(stopped.text)

    # The service marks the queued adapter answer as stopped; its task then skips it.
    assert chat_services.chat_stop(owner=user, session=session2) == 1
    queued = ChatAnswer.objects.get(id=answers2["adapter"].id)
    assert queued.state == "done" and queued.stopped and queued.text == ""
    assert chat_tasks.chat_answer(str(queued.id)) == "skipped"

    # A question asked after the stop is answered in full.
    with mock.patch("jobs.arena.tasks.chat_round.delay"), django_capture_on_commit_callbacks(execute=True):
        _, later = chat_services.chat_ask(
            owner=user, job=job, prompt="colour 1", session=session2, generation=GenerationConfig(max_new_tokens=40)
        )
    base_later = next(a for a in later if a.job_id is None)
    assert chat_tasks.chat_answer(str(base_later.id)) == "done"
    answered = ChatAnswer.objects.get(id=base_later.id)
    assert not answered.stopped
    tokenizer = load_tokenizer(base_model.path)
    assert len(tokenizer(answered.text, add_special_tokens=False)["input_ids"]) >= 30, "ran to max_new_tokens"


def test_the_pages_stop_button_is_owner_only_and_post_only(
    real_redis, page_api, client, user, other_user, base_model, django_capture_on_commit_callbacks
):
    job = finished_job(user, base_model, "colours")
    session, _ = ask(user, job, django_capture_on_commit_callbacks)
    client.force_login(other_user)
    assert client.post(f"/api/v1/chats/{session.id}/stop/").status_code in (403, 404)  # no CSRF token, not hers
    assert page_api.get(f"/api/v1/chats/{session.id}/stop/").status_code == 405
    response = page_api.post(f"/api/v1/chats/{session.id}/stop/")
    assert response.status_code == 200 and response.json() == {"unfinished": 2}
    assert set(ChatAnswer.objects.values_list("stopped", flat=True)) == {True}


def test_nul_characters_are_dropped_before_storing_and_streaming(user, base_model, django_capture_on_commit_callbacks):
    """PostgreSQL text refuses NUL; a random or badly tuned model can emit one."""
    job = finished_job(user, base_model, "colours")
    _, answers = ask(user, job, django_capture_on_commit_callbacks)
    pool = mock.Mock()
    pool.generate_many.side_effect = lambda path, requests, gen, on_text, should_stop: (
        on_text(0, "a\x00") or on_text(0, "b") or ["a\x00b"]
    )
    published = []
    with (
        mock.patch.object(chat_tasks, "model_pool", lambda: pool),
        mock.patch.object(common_events, "publish", lambda channel, kind, data: published.append((kind, data))),
    ):
        assert chat_tasks.chat_answer(str(answers["base"].id)) == "done"
    assert ChatAnswer.objects.get(id=answers["base"].id).text == "ab"
    assert [d["text"] for k, d in published if k in ("token", "done")] == ["a", "b", "ab"]


def test_stop_over_the_rest_api(real_redis, user, other_user, base_model, django_capture_on_commit_callbacks):
    from tests.factories import bearer_client

    job = finished_job(user, base_model, "colours")
    session, answers = ask(user, job, django_capture_on_commit_callbacks)
    assert bearer_client(other_user).post(f"/api/v1/chats/{session.id}/stop/").status_code == 404
    api = bearer_client(user)
    response = api.post(f"/api/v1/chats/{session.id}/stop/")
    assert response.status_code == 200 and response.json() == {"unfinished": 2}
    listed = api.get(f"/api/v1/jobs/{job.id}/chat/?session={session.id}").json()
    assert [(a["state"], a["stopped"]) for a in listed] == [("done", True), ("done", True)]
    assert api.post(f"/api/v1/chats/{session.id}/stop/").json() == {"unfinished": 0}
