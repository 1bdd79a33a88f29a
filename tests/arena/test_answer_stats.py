"""Each answer's done event (and its stored row, which a late page's replay reads) says how many tokens it
has and how long its first piece and its whole text took, timed by the infer worker."""

from unittest import mock

from jobs.arena import tasks as chat_tasks
from jobs.arena.models import ChatAnswer
from jobs.common import events as common_events
from tests.arena.test_chat_stop import ask
from tests.arena.test_compare_votes import finished_job
from worker.modeling import load_tokenizer


class Clock:
    """time.monotonic for the task: each call is 0.25 s after the one before."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        self.now += 0.25
        return self.now


def test_done_events_carry_token_count_and_latency(user, base_model, django_capture_on_commit_callbacks):
    job = finished_job(user, base_model, "colours")
    _, answers = ask(user, job, django_capture_on_commit_callbacks)
    ids = [str(answers["base"].id), str(answers["adapter"].id)]

    def generate_many(path, requests, gen, on_text, should_stop):
        on_text(0, "red and")
        on_text(0, " blue")
        return ["red and blue", ""]  # the second side says nothing

    pool = mock.Mock()
    pool.generate_many.side_effect = generate_many
    published = []
    with (
        mock.patch.object(chat_tasks, "model_pool", lambda: pool),
        mock.patch.object(chat_tasks, "monotonic", Clock()),
        mock.patch.object(common_events, "publish", lambda channel, kind, data: published.append((kind, data))),
    ):
        assert chat_tasks.chat_round(ids) == ["done", "done"]
    done = {d["answer"]: d for kind, d in published if kind == "done"}
    tokens = len(load_tokenizer(base_model.path)("red and blue", add_special_tokens=False)["input_ids"])
    assert tokens > 0
    # started at 100.25, first piece at 100.5, last at 100.75, generate returned at 101.0
    assert {k: done[ids[0]][k] for k in ("tokens", "first_token_ms", "total_ms")} == {
        "tokens": tokens,
        "first_token_ms": 250,
        "total_ms": 500,
    }
    assert {k: done[ids[1]][k] for k in ("tokens", "first_token_ms", "total_ms")} == {
        "tokens": 0,
        "first_token_ms": None,
        "total_ms": 750,
    }
    assert done[ids[0]]["text"] == "red and blue" and done[ids[0]]["stopped"] is False  # the old fields stay
    assert ChatAnswer.objects.get(id=ids[0]).stats == {"tokens": tokens, "first_token_ms": 250, "total_ms": 500}
