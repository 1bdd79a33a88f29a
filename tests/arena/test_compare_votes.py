"""Side by side of two or three models, blind A/B votes stored against the models, win rates: through the
REST API, with an API key and as the compare page's script calls it (session cookie plus CSRF token)."""

from unittest import mock

import pytest
from rest_framework.test import APIClient

from jobs.arena import selectors as chat_selectors
from jobs.arena import services as chat_services
from jobs.arena import tasks as chat_tasks
from jobs.arena.models import ChatAnswer, Vote
from jobs.common import events as common_events
from jobs.training.models import Adapter, FineTuneJob, JobStatus
from worker.config import TrainConfig


def finished_job(owner, base_model, name: str) -> FineTuneJob:
    """A succeeded job with an adapter row (no training: the infer worker is mocked here)."""
    job = FineTuneJob.objects.create(
        owner=owner, base_model=base_model, config=TrainConfig().to_dict(), name=name, status=JobStatus.SUCCEEDED
    )
    Adapter.objects.create(
        job=job, folder=f"jobs/{job.id}/adapter", zip_file=f"jobs/{job.id}/a.zip", size_bytes=1, sha256="0" * 64
    )
    return job


@pytest.fixture
def job(user, base_model):
    return finished_job(user, base_model, "colours")


@pytest.fixture
def job2(user, base_model):
    return finished_job(user, base_model, "shapes")


BASE = "base"


def ask(client, job, django_capture_on_commit_callbacks, **body):
    with mock.patch("jobs.arena.tasks.chat_round.delay") as delay, django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"/api/v1/jobs/{job.id}/chat/", {"prompt": "colour 1", "max_new_tokens": 4, **body}, format="json"
        )
    return response, delay


def columns(body: dict, job) -> dict[str, str]:
    """The round's answer ids by column as the compare page keys them: A, B in a blind round, else "base",
    "adapter" (the page's job) or the other job's id."""

    def key(answer):
        if body["blind"]:
            return "ABC"[answer["position"]]
        if answer["model"]["kind"] == "base":
            return "base"
        return "adapter" if answer["model"]["id"] == str(job.id) else answer["model"]["id"]

    return {key(a): a["id"] for a in body["answers"]}


def error_of(response) -> tuple[str, str]:
    """(field, message) of a REST error: a product error, or DRF's first per-field message."""
    body = response.json()
    if "error" in body:
        return body["error"]["field"], body["error"]["message"]
    field, messages = next(iter(body.items()))
    return field, " ".join(messages) if isinstance(messages, list) else str(messages)


def answer_all(answer_ids, texts=None):
    """Run the infer task for each answer with a fake model pool; the adapter each was routed to."""
    pool = mock.Mock()
    routed = {}

    def generate_many(path, requests, gen, on_text=None, should_stop=None):
        ((history, adapter),) = requests
        routed[current] = adapter
        return [texts[current] if texts else f"text of {adapter[0] if adapter else 'base'}"]

    pool.generate_many.side_effect = generate_many
    with mock.patch.object(chat_tasks, "model_pool", lambda: pool), mock.patch.object(common_events, "publish"):
        for current in answer_ids:
            assert chat_tasks.chat_answer(current) == "done"
    return routed, pool


def vote(client, round_id, choice):
    return client.post(f"/api/v1/chat-rounds/{round_id}/vote/", {"choice": choice}, format="json")


def test_three_models_answer_side_by_side_each_through_its_own_adapter(
    page_api, job, job2, django_capture_on_commit_callbacks
):
    response, delay = ask(
        page_api, job, django_capture_on_commit_callbacks, contestants=["base", str(job.id), str(job2.id)]
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert columns(body, job).keys() == {"base", "adapter", str(job2.id)} and delay.call_count == 1
    assert [a["model"]["name"] for a in body["answers"]] == [
        "tiny-llama (base)",
        f"colours ({job.short_id})",
        f"shapes ({job2.short_id})",
    ]
    stored = {a.position: a for a in ChatAnswer.objects.filter(round_id=body["round"])}
    assert [(a.job, a.side) for a in stored.values()] == [(None, "base"), (job, "adapter"), (job2, "adapter")]
    # One infer task for the round, answers in screen order, each routed to the adapter it is stored against.
    assert delay.call_args.args[0] == [str(stored[i].id) for i in range(3)]
    routed, _ = answer_all([str(stored[i].id) for i in range(3)])
    assert routed[str(stored[0].id)] is None
    assert routed[str(stored[1].id)][0] == str(job.adapter.id)
    assert routed[str(stored[2].id)][0] == str(job2.adapter.id)
    # Three answers: no vote (a vote compares two).
    response = vote(page_api, body["round"], "left")
    assert response.status_code == 400 and response.json()["error"]["field"] == "round"


def test_each_model_continues_its_own_conversation_and_blind_rounds_stand_alone(
    page_api, job, job2, django_capture_on_commit_callbacks
):
    pair = [str(job.id), str(job2.id)]
    first, _ = ask(page_api, job, django_capture_on_commit_callbacks, contestants=pair)
    ids = columns(first.json(), job)
    answer_all(list(ids.values()), texts={ids["adapter"]: "one", ids[str(job2.id)]: "two"})
    second, _ = ask(
        page_api,
        job,
        django_capture_on_commit_callbacks,
        contestants=pair,
        session=first.json()["session"],
        prompt="again",
    )
    ids2 = columns(second.json(), job)
    _, pool = answer_all([ids2["adapter"]], texts={ids2["adapter"]: "x"})
    assert pool.generate_many.call_args.args[1][0][0] == [
        {"role": "user", "content": "colour 1"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "again"},
    ]
    blind, _ = ask(
        page_api,
        job,
        django_capture_on_commit_callbacks,
        contestants=pair,
        blind=True,
        session=first.json()["session"],
        prompt="blind one",
    )
    answer_id = columns(blind.json(), job)["A"]
    _, pool = answer_all([answer_id], texts={answer_id: "x"})
    assert pool.generate_many.call_args.args[1][0][0] == [{"role": "user", "content": "blind one"}]


@pytest.mark.parametrize("order", ["as given", "reversed"])
def test_blind_vote_is_stored_against_the_models_whatever_the_screen_order(
    page_api, user, job, order, django_capture_on_commit_callbacks
):
    shuffle = (lambda models: list(models)) if order == "as given" else (lambda models: list(models)[::-1])
    with mock.patch.object(chat_services, "_blind_order", side_effect=shuffle):
        response, _ = ask(
            page_api, job, django_capture_on_commit_callbacks, contestants=["base", str(job.id)], blind=True
        )
    assert response.status_code == 201
    body = response.json()
    # Nothing in the answer (keys, slots, event metadata) tells which model is where.
    assert body["blind"] is True and set(columns(body, job)) == {"A", "B"}
    assert [(a["model"], a["side"]) for a in body["answers"]] == [(None, None), (None, None)]
    answers = list(ChatAnswer.objects.filter(round_id=body["round"]).order_by("position"))
    assert all("side" not in chat_selectors.answer_event_meta(a) for a in answers)
    left_model = answers[0].job
    assert left_model == (None if order == "as given" else job)

    assert vote(page_api, body["round"], "left").status_code == 409  # answers still pending
    answer_all([str(a.id) for a in answers])
    response = vote(page_api, body["round"], "left")
    assert response.status_code == 201, response.json()
    stored = Vote.objects.get()
    # Canonical order: the base first, whatever was on the left.
    assert (stored.first_job, stored.second_job, stored.owner, stored.blind) == (None, job, user, True)
    assert stored.result == ("first" if left_model is None else "second")
    revealed = [s["model"]["name"] for s in response.json()["slots"]]
    expected = ["tiny-llama (base)", f"colours ({job.short_id})"]
    assert revealed == (expected if order == "as given" else expected[::-1])
    [row] = page_api.get("/api/v1/win-rates/").json()
    assert row["model"]["kind"] == "base" and row["opponent"]["id"] == str(job.id)
    assert (row["wins"], row["losses"], row["n"]) == ((1, 0, 1) if left_model is None else (0, 1, 1))

    # Once per round.
    again = vote(page_api, body["round"], "right")
    assert again.status_code == 409 and again.json()["error"]["field"] == "round"
    assert Vote.objects.count() == 1


@pytest.mark.parametrize("choice", ["tie", "both_bad"])
def test_tie_and_both_bad_count_half_for_each_side(page_api, job, job2, choice, django_capture_on_commit_callbacks):
    response, _ = ask(page_api, job, django_capture_on_commit_callbacks, contestants=[str(job2.id), str(job.id)])
    body = response.json()
    answer_all(list(columns(body, job).values()))
    response = vote(page_api, body["round"], choice)
    assert response.status_code == 201 and Vote.objects.get().result == choice
    [row] = page_api.get(f"/api/v1/win-rates/?base_model={job.base_model_id}").json()
    assert row[{"tie": "ties", "both_bad": "both_bad"}[choice]] == 1 and row["win_rate"] == 0.5
    first, second = sorted([job, job2], key=lambda j: str(j.id))
    assert (row["model"]["id"], row["opponent"]["id"]) == (str(first.id), str(second.id))


def test_bad_input_is_a_4xx_naming_the_field(
    page_api, user, other_user, base_model, job, job2, django_capture_on_commit_callbacks
):
    from jobs.base_models.services import base_model_register

    other_base = base_model_register(name="tiny-llama-2", path=base_model.path)
    cases = [
        ({"contestants": ["base"]}, "contestants", "at least 2"),
        ({"contestants": ["base", str(job.id), str(job2.id), "base"]}, "contestants", "no more than 3"),
        ({"contestants": ["base", "base"]}, "contestants", "only once"),
        ({"contestants": "base"}, "contestants", "Expected a list"),
        ({"contestants": ["base", "nope"]}, "contestants", "unknown model"),
        (
            {"contestants": ["base", str(finished_job(other_user, base_model, "bob's").id)]},
            "contestants",
            "unknown model",
        ),
        (
            {"contestants": ["base", str(finished_job(user, other_base, "elsewhere").id)]},
            "contestants",
            "share one base model",
        ),
        ({"contestants": ["base", str(job.id), str(job2.id)], "blind": True}, "blind", "exactly two"),
        ({"blind": "perhaps"}, "blind", "valid boolean"),
        ({"prompt": "   "}, "prompt", "blank"),
        ({"session": "nope"}, "session", "valid UUID"),
    ]
    for body, field, message in cases:
        response, delay = ask(page_api, job, django_capture_on_commit_callbacks, **body)
        assert response.status_code == 400, body
        assert error_of(response)[0] == field and message in error_of(response)[1], (body, response.json())
        assert not delay.called
    response, _ = ask(page_api, job, django_capture_on_commit_callbacks)
    round_id = response.json()["round"]
    answer_all(list(columns(response.json(), job).values()))
    for body, field in (({"choice": "up"}, "choice"), ({}, "choice"), ({"choice": "left", "x": 1}, "x")):
        response = page_api.post(f"/api/v1/chat-rounds/{round_id}/vote/", body, format="json")
        assert response.status_code == 400 and error_of(response)[0] == field
    response = page_api.post(f"/api/v1/chat-rounds/{round_id}/vote/", "nope", content_type="application/json")
    assert response.status_code == 400 and "JSON parse error" in response.json()["detail"]
    assert page_api.get(f"/api/v1/chat-rounds/{round_id}/vote/").status_code == 405
    assert Vote.objects.count() == 0


def test_another_users_round_and_votes_do_not_exist_for_you(
    client, page_api, user, other_user, job, django_capture_on_commit_callbacks
):
    response, _ = ask(page_api, job, django_capture_on_commit_callbacks, blind=True)
    round_id = response.json()["round"]
    answer_all(list(columns(response.json(), job).values()))
    assert vote(page_api, round_id, "right").status_code == 201
    bob = APIClient()
    bob.force_authenticate(other_user)
    assert bob.post(f"/api/v1/chat-rounds/{round_id}/vote/", {"choice": "left"}, format="json").status_code == 404
    assert bob.get("/api/v1/win-rates/").json() == []
    client.force_login(other_user)
    assert client.get(f"/jobs/{job.id}/compare/").status_code == 404
    with pytest.raises(chat_services.ChatStateError):
        chat_services.chat_vote(owner=other_user, chat_round=Vote.objects.get().round, choice="left")


def test_rest_blind_round_vote_and_win_rates(user, job, base_model, django_capture_on_commit_callbacks):
    api = APIClient()
    api.force_authenticate(user)
    with (
        mock.patch.object(chat_services, "_blind_order", side_effect=lambda models: list(models)[::-1]),
        mock.patch("jobs.arena.tasks.chat_round.delay"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = api.post(
            f"/api/v1/jobs/{job.id}/chat/",
            {"prompt": "hi", "blind": True, "contestants": ["base", str(job.id)]},
            format="json",
        )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["blind"] is True and [(a["position"], a["model"], a["side"]) for a in body["answers"]] == [
        (0, None, None),
        (1, None, None),
    ]
    answer_all([a["id"] for a in body["answers"]])
    listed = api.get(f"/api/v1/jobs/{job.id}/chat/?session={body['session']}").json()
    assert [a["model"] for a in listed] == [None, None]

    response = api.post(f"/api/v1/chat-rounds/{body['round']}/vote/", {"choice": "left"}, format="json")
    assert response.status_code == 201, response.json()
    out = response.json()
    # Left was the adapter (reversed order), so the second model in canonical order (the adapter) won.
    assert out["result"] == "second" and out["first_model"]["kind"] == "base"
    assert out["second_model"] == {"kind": "adapter", "id": str(job.id), "name": f"colours ({job.short_id})"}
    assert [s["model"]["kind"] for s in out["slots"]] == ["adapter", "base"]
    listed = api.get(f"/api/v1/jobs/{job.id}/chat/?session={body['session']}").json()
    assert [a["side"] for a in listed] == ["adapter", "base"]
    again = api.post(f"/api/v1/chat-rounds/{body['round']}/vote/", {"choice": "left"}, format="json")
    assert again.status_code == 409 and again.json()["error"]["field"] == "round"
    bad = api.post(f"/api/v1/chat-rounds/{body['round']}/vote/", {"choice": "middle"}, format="json")
    assert bad.status_code == 400 and "choice" in bad.json()

    [row] = api.get("/api/v1/win-rates/").json()
    assert (row["model"]["kind"], row["wins"], row["losses"], row["n"], row["win_rate"]) == ("base", 0, 1, 1, 0.0)
    assert row["ci_low"] == 0.0 and row["ci_high"] == pytest.approx(0.7935, abs=1e-4)  # Wilson 0/1
    assert api.get(f"/api/v1/win-rates/?base_model={base_model.id}").json() == [row]
    for wanted in ("nope", "00000000-0000-0000-0000-000000000000"):
        response = api.get(f"/api/v1/win-rates/?base_model={wanted}")
        assert response.status_code == 400 and response.json()["error"]["field"] == "base_model"


def test_win_rates_say_each_pair_in_plain_words_from_the_side_asked_for(
    page_api, client_in, job, job2, django_capture_on_commit_callbacks
):
    for contestants, choice in (([BASE, job], "right"), ([job2, job], "left"), ([BASE, job2], "tie")):
        keys = [c if c == BASE else str(c.id) for c in contestants]
        response, _ = ask(page_api, job, django_capture_on_commit_callbacks, contestants=keys)
        answer_all(list(columns(response.json(), job).values()))
        assert vote(page_api, response.json()["round"], choice).status_code == 201
    colours, shapes, base = f"colours ({job.short_id})", f"shapes ({job2.short_id})", "tiny-llama (base)"

    # Unchanged by default: each pair from its first model's side (the base first), now with a summary.
    rows = {(r["model"]["name"], r["opponent"]["name"]): r for r in page_api.get("/api/v1/win-rates/").json()}
    first, second = sorted([(job, colours), (job2, shapes)], key=lambda j: str(j[0].id))
    assert set(rows) == {(base, colours), (first[1], second[1]), (base, shapes)}
    assert {k for r in rows.values() for k in r} == {
        "model",
        "opponent",
        "wins",
        "losses",
        "ties",
        "both_bad",
        "n",
        "win_rate",
        "ci_low",
        "ci_high",
        "summary",
    }
    row = rows[(base, colours)]
    assert (row["wins"], row["losses"], row["win_rate"]) == (0, 1, 0.0)
    assert row["summary"] == (
        f"{base} won 0 of 1 vote (0 %) against {colours}. "
        "With this few votes the true rate could be anywhere from 0 % to 79 %."
    )

    # From this job's side, as its compare page asks (any spelling of the id); other pairs from the adapter's side.
    for spelling in (str(job.id), str(job.id).upper(), job.id.hex):
        oriented = page_api.get(f"/api/v1/win-rates/?side_of={spelling}&base_model={job.base_model_id}").json()
        got = {(r["model"]["name"], r["opponent"]["name"]): r for r in oriented}
        assert set(got) == {(colours, base), (colours, shapes), (shapes, base)}, spelling
    mine = got[(colours, base)]
    assert (mine["wins"], mine["losses"], mine["win_rate"]) == (1, 0, 1.0)
    assert mine["ci_low"] == pytest.approx(1 - row["ci_high"]) and mine["ci_high"] == pytest.approx(1 - row["ci_low"])
    assert mine["summary"] == (
        f"{colours} won 1 of 1 vote (100 %) against {base}. "
        "With this few votes the true rate could be anywhere from 21 % to 100 %."
    )
    assert (got[(colours, shapes)]["wins"], got[(colours, shapes)]["losses"]) == (0, 1)
    assert got[(shapes, base)]["summary"].startswith(
        f"{shapes} won 0 of 1 vote against {base} and lost 0; 1 tie counts as half a win, so its win rate is 50 %."
    )
    response = page_api.get("/api/v1/win-rates/?side_of=nope")
    assert response.status_code == 400 and response.json()["error"]["field"] == "side_of"

    # The compare page draws the same rows from its job's side, and says where the numbers come from in a hint.
    response = client_in.get(f"/jobs/{job.id}/compare/")
    assert response.context["win_rates"] == oriented
    html = response.content.decode()
    assert f"side_of={job.id}" in html and "95% CI" not in html and 'title="The range is a 95% Wilson' in html


def test_compare_page_offers_finished_adapters_on_the_same_base_and_the_table(client_in, user, job, job2, base_model):
    from jobs.base_models.services import base_model_register

    finished_job(user, base_model_register(name="tiny-llama-2", path=base_model.path), "elsewhere")
    FineTuneJob.objects.create(
        owner=user, base_model=base_model, config=TrainConfig().to_dict(), name="running", status=JobStatus.RUNNING
    )
    response = client_in.get(f"/jobs/{job.id}/compare/")
    assert response.status_code == 200
    assert [(c["key"], c["checked"]) for c in response.context["candidates"]] == [
        ("base", True),
        (str(job.id), True),
        (str(job2.id), False),
    ]
    html = response.content.decode()
    assert 'id="win-rates"' in html and "Wilson" in html and 'id="win-rates-data"' in html
    # Blind mode is a switch in the page, explained in a line; "New chat" starts over.
    assert 'role="switch"' in html and 'id="blind-help"' in html and 'id="new-chat"' in html
    # The page's script is pointed at the REST API, not at a private one.
    assert f'data-ask-url="/api/v1/jobs/{job.id}/chat/"' in html and 'data-vote-base="/api/v1/chat-rounds/"' in html


def test_a_session_without_the_csrf_token_is_refused(user, job):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post(f"/api/v1/jobs/{job.id}/chat/", {"prompt": "hi"}, format="json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert not ChatAnswer.objects.exists()
