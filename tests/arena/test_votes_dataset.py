"""Votes become data: every round voted left or right becomes a preference pair (prompt with its
history, chosen = the preferred answer), ties and "both bad" are left out and counted, the dataset
links back to its rounds; through REST (as the compare page's script calls it), the page's form,
and only ever the owner's own votes."""

import pytest
from rest_framework.test import APIClient

from jobs.arena import services as chat_services
from jobs.arena.models import ChatAnswer, ChatRound, ChatSession
from jobs.datasets.models import Dataset
from jobs.datasets.selectors import dataset_examples
from tests.arena.test_compare_votes import finished_job

URL = "/api/v1/votes/dataset/"


@pytest.fixture
def job(user, base_model):
    return finished_job(user, base_model, "colours")


def voted_round(owner, job, *, prompt, left, right, choice, session=None, blind=True, system=""):
    """A finished two-answer round, left the base and right the adapter, voted `choice` through the service."""
    session = session or ChatSession.objects.create(owner=owner, job=job)
    chat_round = ChatRound.objects.create(session=session, blind=blind)
    for position, (model, text) in enumerate(((None, left), (job, right))):
        ChatAnswer.objects.create(
            session=session,
            round=chat_round,
            job=model,
            position=position,
            prompt=prompt,
            side="base" if model is None else "adapter",
            text=text,
            state=ChatAnswer.State.DONE,
            settings={"system_prompt": system},
        )
    chat_services.chat_vote(owner=owner, chat_round=chat_round, choice=choice)
    return chat_round


def pair(prompt, chosen, rejected):
    return {
        "messages": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def test_left_and_right_votes_become_pairs_and_the_rest_is_counted(page_api, user, job, base_model):
    first = voted_round(
        user, job, prompt="Name a colour.", left="Seven.", right="Red.", choice="right", system="Be brief."
    )
    session = ChatSession.objects.create(owner=user, job=job)
    # An open (not blind) conversation: the second round's prompt carries the preferred model's history.
    second = voted_round(
        user, job, prompt="Name a shape.", left="A circle.", right="Blue.", choice="left", session=session, blind=False
    )
    third = voted_round(
        user, job, prompt="And another?", left="A square.", right="Green.", choice="left", session=session, blind=False
    )
    voted_round(user, job, prompt="tie", left="a", right="b", choice="tie")
    voted_round(user, job, prompt="bad", left="a", right="b", choice="both_bad")
    voted_round(user, job, prompt="same", left="x", right="x", choice="left")

    response = page_api.post(URL, {"name": "my prefs", "base_model": str(base_model.id)}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["used"], body["rows"], body["name"]) == (3, 3, "my prefs")
    assert body["left_out"] == {"tie": 1, "both_bad": 1, "identical_answers": 1}
    assert set(body["left_out_reasons"]) == {"tie", "both_bad", "identical_answers"}
    assert body["rounds"] == [str(first.id), str(second.id), str(third.id)]
    dataset = Dataset.objects.get(id=body["dataset"], owner=user)
    assert body["url"] == f"/datasets/{dataset.id}/"
    assert dataset.schema == "preference" and dataset.stats["rounds"] == body["rounds"]
    assert dataset.stats["source"] == "compare_votes" and dataset.stats["votes_used"] == 3
    # The link back to the rounds is part of the dataset over REST too.
    assert page_api.get(f"/api/v1/datasets/{dataset.id}/").json()["stats"]["rounds"] == body["rounds"]
    assert [ex.to_json() for ex in dataset_examples(dataset=dataset)] == [
        pair(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
            "Red.",
            "Seven.",
        ),
        pair([{"role": "user", "content": "Name a shape."}], "A circle.", "Blue."),
        pair(
            [
                {"role": "user", "content": "Name a shape."},
                {"role": "assistant", "content": "A circle."},
                {"role": "user", "content": "And another?"},
            ],
            "A square.",
            "Green.",
        ),
    ]


def test_no_usable_vote_is_a_422_saying_why(page_api, user, job):
    response = page_api.post(URL, {}, format="json")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "votes" and "no votes yet" in response.json()["error"]["message"]
    voted_round(user, job, prompt="tie", left="a", right="b", choice="tie")
    voted_round(user, job, prompt="bad", left="a", right="b", choice="both_bad")
    response = page_api.post(URL, {}, format="json")
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "1 left out because a tie prefers neither answer" in message and "both answers were bad" in message
    for bad, field in (
        ({"base_model": "nope"}, "base_model"),
        ({"name": "x" * 201}, "name"),
        ({"base_model": "00000000-0000-0000-0000-000000000000"}, "base_model"),
        ({"colour": 1}, "colour"),
    ):
        response = page_api.post(URL, bad, format="json")
        assert response.status_code == 400, bad
        assert field in str(response.json()), (bad, response.json())
    assert not Dataset.objects.exists()


def test_only_your_own_votes_are_read(user, other_user, job, base_model):
    voted_round(user, job, prompt="mine", left="a", right="b", choice="left")
    bob = APIClient()
    bob.force_authenticate(other_user)
    response = bob.post(URL, {"base_model": str(base_model.id)}, format="json")
    assert response.status_code == 422 and "no votes yet" in response.json()["error"]["message"]
    bobs_job = finished_job(other_user, base_model, "bob's")
    voted_round(other_user, bobs_job, prompt="his", left="c", right="d", choice="right")
    response = bob.post(URL, {}, format="json")
    assert response.status_code == 201 and response.json()["used"] == 1
    [example] = dataset_examples(dataset=Dataset.objects.get(owner=other_user))
    assert example.messages == [{"role": "user", "content": "his"}] and example.chosen[0]["content"] == "d"
    assert not Dataset.objects.filter(owner=user).exists()
    assert APIClient().post(URL, {}, format="json").status_code in (401, 403)


def test_the_compare_page_makes_the_dataset_and_says_what_was_used(client_in, user, other_user, job):
    page = client_in.get(f"/jobs/{job.id}/compare/").content.decode()
    assert 'id="votes-dataset-form"' in page and 'data-api-url="/api/v1/votes/dataset/"' in page
    assert "Make a preference dataset from my votes" in page
    response = client_in.post(f"/jobs/{job.id}/compare/votes-dataset/", {"name": ""}, follow=True)
    assert response.redirect_chain[-1][0] == f"/jobs/{job.id}/compare/"
    assert "no vote can become a preference pair" in response.content.decode()

    voted_round(user, job, prompt="Name a colour.", left="Seven.", right="Red.", choice="right")
    voted_round(user, job, prompt="tie", left="a", right="b", choice="tie")
    page = client_in.get(f"/jobs/{job.id}/compare/")
    assert page.context["vote_counts"] == {"first": 0, "second": 1, "tie": 1, "both_bad": 0}
    response = client_in.post(f"/jobs/{job.id}/compare/votes-dataset/", {"name": ""}, follow=True)
    dataset = Dataset.objects.get(owner=user)
    assert response.redirect_chain[-1][0] == f"/datasets/{dataset.id}/"
    html = response.content.decode()
    assert "1 vote became preference pairs; 1 left out (1 tie)." in html
    assert dataset.name == "Preferences from 1 compare vote" and 'id="ds-source"' in html
    # Another user cannot post to this job's page.
    client_in.force_login(other_user)
    assert client_in.post(f"/jobs/{job.id}/compare/votes-dataset/", {}).status_code == 404
