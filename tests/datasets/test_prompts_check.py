"""A dataset of prompts to reward (OpenAI's reinforcement format) on its check page: each prompt through the chat
template with the generation prompt, as the model answers it (nothing marked trained), its length against what
the answers leave of the max length, the grader's fields as a table; and every dataset page and endpoint (the
web pages, REST, /v1/files) answers for it, from a JSONL file and from a CSV whose `messages` is a JSON cell."""

import csv
import io
import json
import re
from unittest import mock

from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.common import queue
from jobs.common.ids import file_id
from jobs.datasets import uploads
from jobs.datasets.models import USEFUL_PROMPTS, Dataset, UploadCheck
from tests.factories import count_tokens
from worker.chat_template import render_chat
from worker.modeling import load_tokenizer

QUESTIONS = ["What is 6 x 7?", "Name a prime above 10.", "Spell the word " + "banana " * 40]
ROWS = [
    {
        "messages": [{"role": "user", "content": q}],
        "answer": str(i),
        "meta": {"level": i, "notes": "a long note that the table shortens " * 3},
    }
    for i, q in enumerate(QUESTIONS)
]


def _upload(client, name: str, content: bytes) -> Dataset:
    response = client.post("/datasets/", {"file": SimpleUploadedFile(name, content), "name": ""})
    assert response.status_code == 302, re.findall(r"<li>(.*?)</li>", response.content.decode())
    return Dataset.objects.get(name=name)


def _csv(rows) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["messages", "answer"])
    for row in rows:
        writer.writerow([json.dumps(row["messages"]), row["answer"]])
    return out.getvalue().encode()


def test_the_check_page_shows_prompts_as_the_model_answers_them(client_in, user, base_model, tiny_llama):
    ds = _upload(client_in, "prompts.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS).encode())
    assert ds.schema == "prompts" and ds.holds_prompts
    count_tokens()
    response = client_in.get(f"/datasets/{ds.id}/?max_length=64&answer_tokens=32")
    assert response.status_code == 200
    html = response.content.decode()

    # What the data is for, in one line, with the way to a job on it.
    kind = re.search(r'<p class="kind-mark" id="ds-kind">(.*?)</p>', html, re.S).group(1)
    assert "Prompts to reward: the model tries answers and your grader scores them" in kind
    assert f'href="/jobs/new/?dataset={ds.id}"' in kind and "pick method reinforcement and a grader" in kind
    assert f"Only 3 prompts: the model will barely change; {USEFUL_PROMPTS} or more" in html

    # Each prompt through the chat template with the assistant's opening, counted as the engine samples from it.
    tokenizer = load_tokenizer(str(tiny_llama))
    rendered = [render_chat(tokenizer, r["messages"], add_generation_prompt=True) for r in ROWS]
    assert rendered[0] != render_chat(tokenizer, ROWS[0]["messages"], add_generation_prompt=False)
    report = response.context["report"]
    assert report.lengths == [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in rendered]
    shown = re.findall(r'<pre class="sample prompt" data-example="\d+">(.*?)</pre>', html, re.S)
    assert len(shown) == 3
    assert [re.sub(r"\s+", " ", s).strip() for s in shown[:2]] == [
        re.sub(r"\s+", " ", t).strip().replace("<", "&lt;").replace(">", "&gt;") for t in rendered[:2]
    ]
    assert 'class="tok trained"' not in html.split('id="examples"')[1], "a prompt has no trained answer"

    # Lengths against the room the answers leave: only the long prompt is over 64 - 32 and keeps its end.
    assert report.lengths[2] > 32 >= max(report.lengths[:2]), report.lengths
    assert 'data-truncated="1" data-room="32"' in html
    assert "longer than the 32 tokens the answers leave" in html and "keeps its end" in html
    assert 'data-max-length="32" data-noun="prompts"' in html
    assert 'name="answer_tokens" value="32"' in html

    # The grader's fields: names as headers, values shortened.
    table = re.search(r'<table id="prompt-fields">(.*?)</table>', html, re.S).group(1)
    assert re.findall(r'<th scope="col">(.*?)</th>', table) == ["answer", "meta"]
    cells = re.findall(r"<tr><td>(\d+)</td><td>(.*?)</td><td>(.*?)</td></tr>", table)
    assert [(n, a) for n, a, _ in cells] == [("1", "0"), ("2", "1"), ("3", "2")]
    meta = cells[0][2]
    assert meta.startswith("{&quot;level&quot;: 0, &quot;notes&quot;: &quot;a long note") and meta.endswith("…")
    assert len(meta.replace("&quot;", '"')) <= 60

    # A longer answer room cuts more prompts; without the parameter, a new job's default (128) is left.
    assert 'data-truncated="2"' in client_in.get(f"/datasets/{ds.id}/?max_length=64&answer_tokens=40").content.decode()
    default = client_in.get(f"/datasets/{ds.id}/?max_length=256").context["report"]
    assert (default.answer_tokens, default.room) == (128, 128)


def test_every_dataset_page_and_endpoint_answers_for_prompts(client_in, api, user, base_model):
    jsonl = _upload(client_in, "prompts.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS).encode())
    table = _upload(client_in, "prompts.csv", _csv(ROWS))
    assert table.schema == "prompts" and table.rows == 3
    count_tokens()
    list_page = client_in.get("/datasets/").content.decode()
    assert "Train on this with reinforcement" in list_page and "Prompts to reward (for reinforcement)" in list_page
    assert f"{USEFUL_PROMPTS} prompts to reward) is a useful start" in list_page
    for ds in (jsonl, table):
        html = client_in.get(f"/datasets/{ds.id}/").content.decode()
        assert "Prompts to reward: the model tries answers" in html
        assert '<th scope="col">answer</th>' in html
        for url in (f"/datasets/{ds.id}/tokens/", f"/datasets/{ds.id}/download/"):
            assert client_in.get(url).status_code == 200, url
        tokens = api.get(f"/api/v1/datasets/{ds.id}/tokens/?max_length=64&max_answer_tokens=32")
        assert tokens.status_code == 200 and tokens.json()["status"] == "ready"
        assert tokens.json()["truncated"] == 1 and len(tokens.json()["lengths"]) == 3
        assert api.get(f"/api/v1/datasets/{ds.id}/tokens/?max_length=64&max_answer_tokens=0").status_code == 400
        detail = api.get(f"/api/v1/datasets/{ds.id}/")
        assert detail.status_code == 200 and detail.json()["schema"] == "prompts"
        assert api.get(f"/api/v1/datasets/{ds.id}/download/").status_code == 200
        assert api.get(f"/v1/files/{file_id(ds.id)}").json()["id"] == file_id(ds.id)
        assert api.get(f"/v1/files/{file_id(ds.id)}/content").status_code == 200
    assert {d["schema"] for d in api.get("/api/v1/datasets/").json()} == {"prompts"}
    assert len(api.get("/v1/files").json()["data"]) == 2
    # The CSV's answer column is the field its grader reads, and the JSON cell became the prompt.
    html = client_in.get(f"/datasets/{table.id}/").content.decode()
    fields = re.search(r'<table id="prompt-fields">(.*?)</table>', html, re.S).group(1)
    assert re.findall(r"<tr><td>\d+</td><td>(.*?)</td></tr>", fields) == ["0", "1", "2"]
    assert "What is 6 x 7?" in re.search(r'<pre class="sample prompt"[^>]*>(.*?)</pre>', html, re.S).group(1)


def test_a_large_prompts_upload_is_checked_in_the_background_then_shown(client_in, api, user, base_model, settings):
    """Over the inline size the upload check page, its status (web and REST) and the count of tokens take the
    background path; the check ends on the prompts' page, its counts in words."""
    settings.DATASET_CHECK_INLINE_BYTES = 100
    with mock.patch.object(queue, "enqueue"):
        response = client_in.post("/datasets/", {"file": SimpleUploadedFile("big.csv", _csv(ROWS)), "name": ""})
        check = UploadCheck.objects.get(owner=user)
        assert response.status_code == 302 and response.url == f"/datasets/checks/{check.id}/"
        assert client_in.get(response.url).status_code == 200
        assert uploads.upload_check_run(check_id=check.id) == "ready"
        assert client_in.get(f"/datasets/checks/{check.id}/status/").json()["status"] == "ready"
        assert api.get(f"/api/v1/datasets/checks/{check.id}/").status_code in (200, 303)
        assert api.get(f"/v1/files/{file_id(check.id)}").status_code == 200
        done = client_in.get(f"/datasets/checks/{check.id}/", follow=True)
    ds = Dataset.objects.get(owner=user)
    assert ds.schema == "prompts"
    assert "Checked big.csv: 3 prompts." in done.content.decode()
    count_tokens()
    html = client_in.get(f"/datasets/{ds.id}/").content.decode()
    assert 'id="prompt-fields"' in html and "Prompts to reward: the model tries answers" in html
