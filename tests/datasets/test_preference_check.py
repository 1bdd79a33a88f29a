"""A preference dataset's check page and token counts: both sides of each pair through the chat
template, only the answers trained, labelled chosen and rejected side by side, and the length
histogram (and its table) of both sides; the REST token report carries the rejected lengths."""

import json
import re

from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.datasets import services
from jobs.datasets.models import Dataset
from jobs.datasets.selectors import dataset_examples
from tests.factories import count_tokens

PAIRS = [
    {
        "prompt": [{"role": "user", "content": f"Name colour {i}."}],
        "chosen": f"Colour {i} is red.",
        "rejected": "I do not know any colours at all, sorry, " * (i + 1),
    }
    for i in range(4)
]


def test_the_check_page_shows_pairs_side_by_side_and_both_histograms(client_in, api, user, base_model, settings):
    settings.DATASET_CHECK_INLINE_BYTES = 10  # its tokens counted by the (here: inline) worker, not the upload
    upload = SimpleUploadedFile("prefs.jsonl", "".join(json.dumps(p) + "\n" for p in PAIRS).encode())
    ds = services.dataset_create(owner=user, upload=upload)
    assert (ds.schema, ds.rows, ds.stats["turns"]) == ("preference", 4, {"system": 0, "user": 4, "assistant": 8})
    assert count_tokens() == 1
    response = client_in.get(f"/datasets/{ds.id}/?max_length=4096")
    html = response.content.decode()
    assert "Preference pairs" in html and "the chosen and the rejected answers" in html
    pairs = re.findall(r'<pre class="sample (chosen|rejected)">(.*?)</pre>', html, re.S)
    assert [side for side, _ in pairs] == ["chosen", "rejected"] * 4  # every pair: up to 10 a page
    trained = [re.findall(r'<span class="tok trained">(.*?)</span>', body, re.S) for _, body in pairs]
    assert "".join(trained[0]).startswith("Colour 0 is red.")
    assert "".join(trained[1]).startswith("I do not know any colours")
    for _, body in pairs:  # the prompt is shown, masked, on both sides
        assert re.search(r'<span class="tok masked">[^<]*Name colour \d\.', body)
    assert "Pair 1: prompt + chosen" in html and "Pair 1: prompt + rejected" in html
    histogram = response.context["histogram"]
    assert sum(histogram["counts"]) == sum(histogram["rejected_counts"]) == 4
    assert 'id="length-table"' in html and "<th>Rejected</th>" in html

    report = response.context["report"]
    assert all(r > c for c, r in zip(report.lengths, report.rejected_lengths))
    body = api.get(f"/api/v1/datasets/{ds.id}/tokens/?base_model={base_model.id}&max_length=4096").json()
    assert body["lengths"] == report.lengths and body["rejected_lengths"] == report.rejected_lengths
    # A pair counts as truncated when its longer side is.
    cut = report.rejected_lengths[0]
    body = api.get(f"/api/v1/datasets/{ds.id}/tokens/?base_model={base_model.id}&max_length={cut}").json()
    assert body["truncated"] == 3


def test_a_chat_dataset_report_has_no_rejected_side(api, base_model, dataset):
    count_tokens()
    body = api.get(f"/api/v1/datasets/{dataset.id}/tokens/?base_model={base_model.id}").json()
    assert body["status"] == "ready" and body["rejected_lengths"] is None and body["lengths"]


def test_unknown_columns_are_mapped_to_pairs_on_the_page(client_in, user):
    rows = [{"ask": f"Name colour {i}.", "good": f"Colour {i}.", "bad": "No idea."} for i in range(3)]
    upload = SimpleUploadedFile("odd.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    html = client_in.post("/datasets/", {"file": upload}).content.decode()
    assert 'name="chosen"' in html and 'name="rejected"' in html
    token = html.split('name="token" value="')[1].split('"')[0]
    response = client_in.post(
        "/datasets/map/",
        {
            "token": token,
            "filename": "odd.jsonl",
            "columns": ["ask", "good", "bad"],
            "prompt": "ask",
            "chosen": "good",
            "rejected": "bad",
        },
    )
    assert response.status_code == 302
    ds = Dataset.objects.get(owner=user)
    assert (ds.schema, ds.rows, ds.mapping) == ("preference", 3, {"prompt": "ask", "chosen": "good", "rejected": "bad"})
    assert dataset_examples(dataset=ds)[0].to_json() == {
        "messages": [{"role": "user", "content": "Name colour 0."}],
        "chosen": [{"role": "assistant", "content": "Colour 0."}],
        "rejected": [{"role": "assistant", "content": "No idea."}],
    }
