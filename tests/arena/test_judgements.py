"""A judge model comparing two models (POST /api/v1/judgements/), end to end on constructed cases whose answer is
known: the run goes through the real background task, the judge and the models answer through the real infer task
(`chat_answer`) with a model pool whose answers the test chooses, and the owner's blind votes are real Vote rows."""

from __future__ import annotations

import pytest

from jobs.arena import tasks as chat_tasks
from jobs.arena.models import ChatAnswer, ChatRound, ChatSession, Judgement
from jobs.arena.services import chat_vote
from jobs.common import queue
from jobs.training.selectors import job_api_model
from tests.arena.test_compare_votes import finished_job

URL = "/api/v1/judgements/"
QUESTIONS = ["q0", "q1", "q2", "q3"]


def _shown(text: str, name: str) -> str:
    """The answer the judge was shown as `name` (A or B) in its prompt."""
    after = text.split(f"[Answer {name}]\n", 1)[1]
    return after.split("\n\n[Answer B]", 1)[0] if name == "A" else after.split("\n\nWhich answer", 1)[0]


def prefers_good(text: str) -> str:
    """A judge that knows the answer: the answer that says "good" is better, whatever its position."""
    a, b = "good" in _shown(text, "A"), "good" in _shown(text, "B")
    return "A" if a and not b else "B" if b and not a else "tie"


class FakePool:
    """The infer worker's model pool: the judge answers by `judge`; a model's answer says which model it is."""

    def __init__(self, judge):
        self.judge, self.asked = judge, []

    def generate_many(self, base_path, requests, gen, should_stop=None, on_text=None):
        out = []
        for messages, adapter in requests:
            text = messages[-1]["content"]
            self.asked.append((text, adapter))
            out.append(self.judge(text) if "[Answer A]" in text else "a good answer" if adapter else "a meh answer")
        return out


@pytest.fixture
def run_here(monkeypatch, real_redis, settings):
    """Tasks run at once, in this process, with the pool the test sets."""
    settings.CHAT_COMPLETION_TIMEOUT = 20  # a mistake fails the test soon rather than waiting 5 minutes
    tasks = {queue.CHAT_ANSWER: chat_tasks.chat_answer, queue.JUDGEMENT_RUN: chat_tasks.judgement_run}
    monkeypatch.setattr("jobs.common.queue.send", lambda name, *args: tasks[name](*args))
    pools = {}
    monkeypatch.setattr(chat_tasks, "model_pool", lambda: pools["pool"])

    def use(judge) -> FakePool:
        pools["pool"] = FakePool(judge)
        return pools["pool"]

    return use


@pytest.fixture
def job(user, base_model):
    return finished_job(user, base_model, "colours")


def voted_round(owner, job, prompt: str, *, adapter_left: bool, choice: str) -> ChatRound:
    """A finished blind round of the base against `job` on `prompt` (the adapter's answer says "good"), voted."""
    session = ChatSession.objects.create(owner=owner, job=job)
    chat_round = ChatRound.objects.create(session=session, blind=True)
    for model, text in ((job, "good: red"), (None, "meh: blue")):
        ChatAnswer.objects.create(
            session=session,
            round=chat_round,
            job=model,
            side=ChatAnswer.Side.ADAPTER if model else ChatAnswer.Side.BASE,
            position=0 if (model is not None) == adapter_left else 1,
            prompt=prompt,
            text=text,
            state=ChatAnswer.State.DONE,
        )
    chat_vote(owner=owner, chat_round=chat_round, choice=choice)
    return chat_round


@pytest.fixture
def votes(user, job):
    """The owner preferred the adapter on q0..q2 (seen left, right, left) and the base on q3."""
    return [
        voted_round(user, job, "q0", adapter_left=True, choice="left"),
        voted_round(user, job, "q1", adapter_left=False, choice="right"),
        voted_round(user, job, "q2", adapter_left=True, choice="left"),
        voted_round(user, job, "q3", adapter_left=True, choice="right"),
    ]


def judge_votes(api, job, base_model, **body):
    body = {"model_a": job_api_model(job), "model_b": base_model.name, "judge": base_model.name, **body}
    response = api.post(URL, {"source": "votes", **body}, format="json")
    assert response.status_code == 201, response.content
    detail = api.get(response.json()["url"])
    assert detail.status_code == 200
    return detail.json()


def test_a_judge_that_knows_the_answer_wins_it_in_both_orders_and_is_set_beside_the_votes(
    api, client_in, user, job, base_model, votes, run_here, transactional_db
):
    pool = run_here(prefers_good)
    body = judge_votes(api, job, base_model)
    assert body["status"] == "done" and (body["done"], body["total"]) == (4, 4)
    # The answers the owner saw are judged (no model is asked again), each pair in both orders.
    assert len(pool.asked) == 8 and all("[Answer A]" in text for text, _ in pool.asked)
    rows = sorted(body["rows"], key=lambda r: r["prompt"])
    assert [r["prompt"] for r in rows] == QUESTIONS
    for row in rows:
        assert (row["answer_a"], row["answer_b"]) == ("good: red", "meh: blue")
        assert (row["first"]["verdict"], row["swapped"]["verdict"], row["outcome"]) == ("A", "B", "a")
        assert not row["flipped"] and row["problem"] == ""
    assert [r["vote"] for r in rows] == ["a", "a", "a", "b"]
    result = body["result"]
    assert (result["wins"], result["losses"], result["ties"], result["n"], result["win_rate"]) == (4, 0, 0, 4, 1.0)
    agreement = body["agreement"]
    assert (agreement["n"], agreement["agreed"], agreement["rate"]) == (4, 3, 0.75)
    assert agreement["kappa"] == pytest.approx(0.0)  # the judge always says A and the owner mostly does: chance
    assert agreement["sentence"].startswith("The judge agreed with you on 3 of 4 prompts (75 %")
    # The page shows the win rate and the agreement side by side, and each prompt's verdicts beside the vote.
    page = client_in.get(f"/jobs/{job.id}/judge/?judgement={body['id']}").content.decode()
    assert 'data-status="done"' in page and "of 4 prompts judged" in page
    assert result["sentence"] in page.replace("&#x27;", "'") and "agreed with you on 3 of 4 prompts" in page
    assert page.count("<tr>") == 1 + 4


def test_a_judge_that_always_picks_the_first_answer_gives_only_ties(
    api, user, job, base_model, votes, run_here, transactional_db
):
    run_here(lambda text: "A")
    body = judge_votes(api, job, base_model)
    assert {(r["first"]["verdict"], r["swapped"]["verdict"], r["outcome"]) for r in body["rows"]} == {("A", "A", "tie")}
    result = body["result"]
    assert (result["wins"], result["losses"], result["ties"], result["win_rate"]) == (0, 0, 4, 0.5)
    assert result["flipped"] == result["same_position"] == 4
    assert "changed its mind when the order was swapped on 4" in result["sentence"]
    assert (body["agreement"]["n"], body["agreement"]["agreed"]) == (4, 0)


def test_given_prompts_are_answered_by_both_models_and_an_unreadable_verdict_is_a_failure(
    api, user, job, base_model, votes, run_here, transactional_db
):
    pool = run_here(lambda text: "Both answers have merit." if "q0" in text else prefers_good(text))
    body = {"model_a": base_model.name, "model_b": job_api_model(job), "judge": job_api_model(job)}
    response = api.post(URL, {**body, "prompts": ["q0", "a new question"], "max_answer_tokens": 16}, format="json")
    assert response.status_code == 201, response.content
    detail = api.get(response.json()["url"]).json()
    asked = ChatAnswer.objects.filter(session__owner=user, messages__isnull=False)
    answers = asked.exclude(prompt__contains="[Answer A]")
    assert sorted(a.prompt for a in answers) == ["a new question", "a new question", "q0", "q0"]
    assert {a.settings["max_new_tokens"] for a in answers} == {16}
    judged = asked.filter(prompt__contains="[Answer A]")
    assert judged.count() == 4 and {a.job_id for a in judged} == {job.id}  # the judge is the ft: model
    assert all(adapter is not None for text, adapter in pool.asked if "[Answer A]" in text)
    first, second = detail["rows"]
    assert (first["answer_a"], first["answer_b"]) == ("a meh answer", "a good answer")
    assert first["outcome"] == "failed" and first["first"]["verdict"] is None
    assert "not A, B or tie" in first["problem"] and first["vote"] == "b"  # q0: the owner's vote, by its prompt
    assert second["outcome"] == "b" and second["vote"] is None
    result = detail["result"]
    assert (result["losses"], result["failed"], result["n"], result["win_rate"]) == (1, 1, 1, 0.0)
    assert detail["agreement"]["n"] == 0  # the only voted prompt could not be judged


def test_bad_requests_name_the_field_and_other_users_things_are_not_found(
    api, api_bob, user, other_user, job, base_model, monkeypatch
):
    def never(*args):
        raise AssertionError("nothing may be queued")

    monkeypatch.setattr("jobs.common.queue.send", never)
    ft = job_api_model(job)
    good = {"model_a": ft, "model_b": base_model.name, "judge": base_model.name, "prompts": ["hi"]}
    cases = [
        ({"model_a": "gone"}, "model_a", "there is no model named 'gone'"),
        ({"model_b": ft}, "model_b", "must be another model than model_a"),
        ({"judge": "ft:tiny-llama:alice:00000000"}, "judge", "there is no model named"),
        ({"source": "all"}, "source", "must be one of prompts, votes, held_out"),
        ({"source": "votes"}, "source", "no blind votes on these two models"),
        ({"source": "held_out"}, "job", "name one of your jobs"),
        ({"source": "held_out", "job": str(job.id)}, "job", "holds no examples out"),
    ]
    for change, field, message in cases:
        response = api.post(URL, {**good, **change}, format="json")
        assert response.status_code == 400, (change, response.content)
        error = response.json()["error"]
        assert error["field"] == field and message in error["message"], (change, error)
    drf = [({"prompts": []}, "prompts"), ({"prompts": [""]}, "prompts"), ({"count": 51}, "count"), ({"x": 1}, "x")]
    drf += [({"prompts": ["p"] * 51}, "prompts"), ({"prompts": ["x" * 4001]}, "prompts")]
    drf += [({"max_answer_tokens": 513}, "max_answer_tokens")]
    for change, field in drf:
        response = api.post(URL, {**good, **change}, format="json")
        assert response.status_code == 400 and field in response.json(), (change, response.content)
    # Bob cannot name Alice's adapted model, nor see or cancel her judgement.
    bobs = api_bob.post(URL, {**good, "model_b": "tiny-llama"}, format="json")
    assert bobs.status_code == 400 and bobs.json()["error"]["field"] == "model_a"
    monkeypatch.setattr("jobs.common.queue.send", lambda *args: None)  # queued, never run here
    mine = api.post(URL, good, format="json")
    assert mine.status_code == 201 and mine.json()["status"] == "queued"
    url = mine.json()["url"]
    assert api_bob.get(url).status_code == 404 and api_bob.post(f"{url}cancel/").status_code == 404
    assert api_bob.get(URL).json() == [] and [j["id"] for j in api.get(URL).json()] == [mine.json()["id"]]
    cancelled = api.post(f"{url}cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.post(f"{url}cancel/").status_code == 409
    assert chat_tasks.judgement_run(mine.json()["id"]) == "skipped"  # a cancelled judgement never runs


def test_a_run_resumes_after_a_crash_and_one_that_lost_its_claim_writes_nothing(
    user, job, base_model, run_here, transactional_db
):
    from jobs.arena import judgements
    from jobs.common.leased import lease_from_now

    run_here(prefers_good)
    judgement = Judgement.objects.create(
        owner=user,
        model_a=job_api_model(job),
        model_b=base_model.name,
        judge=base_model.name,
        source="prompts",
        rows=[
            {"messages": [{"role": "user", "content": "done before"}], "round": None, "outcome": "tie"},
            {"messages": [{"role": "user", "content": "left"}], "round": None},
        ],
        status=Judgement.Status.RUNNING,
        attempts=1,
        claim="dead",
        lease_until=lease_from_now(-5),  # its worker died
    )
    assert chat_tasks.sweep_judgements() == 1  # queued again, and run here at once
    judgement.refresh_from_db()
    assert judgement.status == Judgement.Status.DONE and judgement.attempts == 2 and judgement.done == 2
    assert [r["outcome"] for r in judgement.rows] == ["tie", "a"]  # the first prompt was not judged again
    stolen = Judgement.objects.create(
        owner=user, model_a=base_model.name, model_b=job_api_model(job), judge=base_model.name, source="prompts",
        rows=[{"messages": [{"role": "user", "content": "x"}], "round": None}],
    )  # fmt: skip
    token = judgements.judgement_claim(stolen)
    assert token is not None and judgements.judgement_claim(stolen) is None  # one run at a time
    Judgement.objects.filter(id=stolen.id).update(claim="another")
    assert judgements.judgement_work(stolen, token) == "lost"
    stolen.refresh_from_db()
    assert stolen.status == Judgement.Status.RUNNING and "outcome" not in stolen.rows[0]


def test_the_page_asks_a_judge_with_a_form_and_says_what_is_wrong_beside_the_field(
    client_in, job, base_model, monkeypatch, django_capture_on_commit_callbacks
):
    sent = []
    monkeypatch.setattr("jobs.common.queue.send", lambda name, *args: sent.append((name, args)))
    compare = client_in.get(f"/jobs/{job.id}/compare/").content.decode()
    assert f'href="/jobs/{job.id}/judge/"' in compare
    page = client_in.get(f"/jobs/{job.id}/judge/").content.decode()
    ft = job_api_model(job)
    assert f'<option value="{ft}" selected>' in page and 'value="votes" checked' in page
    form = {
        "model_a": ft,
        "model_b": base_model.name,
        "judge": base_model.name,
        "count": "10",
        "max_answer_tokens": "64",
    }
    refused = client_in.post(f"/jobs/{job.id}/judge/", {**form, "source": "votes"})
    assert refused.status_code == 400
    assert (
        'id="model_a"' in refused.content.decode() and "no blind votes on these two models" in refused.content.decode()
    )
    same = client_in.post(f"/jobs/{job.id}/judge/", {**form, "model_b": ft, "source": "prompts", "prompts": "hi"})
    assert 'id="model_b-error">must be another model than model_a' in same.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        asked = client_in.post(f"/jobs/{job.id}/judge/", {**form, "source": "prompts", "prompts": "one\n\ntwo\n"})
    assert asked.status_code == 302
    judgement = Judgement.objects.get()
    assert asked["Location"].endswith(f"?judgement={judgement.id}") and sent == [
        (queue.JUDGEMENT_RUN, (str(judgement.id),))
    ]
    assert [r["messages"][-1]["content"] for r in judgement.rows] == [
        "one",
        "two",
    ] and judgement.max_answer_tokens == 64
    shown = client_in.get(asked["Location"]).content.decode()
    assert 'data-status="queued"' in shown and "0</span> of 2 prompts judged" in shown and 'name="cancel"' in shown
    cancelled = client_in.post(f"/jobs/{job.id}/judge/", {"cancel": str(judgement.id)})
    assert cancelled.status_code == 302
    judgement.refresh_from_db()
    assert judgement.status == Judgement.Status.CANCELLED


def test_held_out_examples_give_their_conversations_up_to_the_last_user_message(api, job, base_model, monkeypatch):
    import json

    from jobs.common import blobs
    from jobs.training.files import job_files

    monkeypatch.setattr("jobs.common.queue.send", lambda *args: None)
    held = [
        {"messages": [{"role": "user", "content": "colour 1"}, {"role": "assistant", "content": "red"}]},
        {"text": "plain text has no prompt"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "colour 2"}]},
        {"messages": [{"role": "user", "content": "colour 3"}, {"role": "assistant", "content": "green"}]},
    ]
    with blobs.writing(job_files(job, "data/eval.jsonl")) as path:
        path.write_text("".join(json.dumps(row) + "\n" for row in held))
    body = {"model_a": job_api_model(job), "model_b": base_model.name, "judge": base_model.name}
    response = api.post(URL, {**body, "source": "held_out", "job": str(job.id), "count": 2}, format="json")
    assert response.status_code == 201, response.content
    assert [r["prompt"] for r in response.json()["rows"]] == ["colour 1", "colour 2"]
    rows = Judgement.objects.get().rows
    assert rows[1]["messages"] == held[2]["messages"] and rows[0]["messages"] == held[0]["messages"][:1]
