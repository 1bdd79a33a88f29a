"""The mapping step pre-filled from the headers with sample values and a clear error when nothing is
mapped; "Drop the N duplicates" (page and REST, owner only) making a new dataset; paged examples."""

import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from jobs.datasets import services
from jobs.datasets.models import Dataset
from jobs.datasets.selectors import dataset_examples
from tests.factories import count_tokens, memorisable_conversations

SUPPORT_CSV = (
    b"Customer Question,Agent Answer,Ticket\n"
    b"Where is my parcel?,It is on its way.,T1\n"
    b"Can I pay later?,Yes: choose invoice at checkout.,T2\n"
    b"Do you ship abroad?,To 30 countries.,T3\n"
)


def _selected(html: str, field: str) -> str | None:
    select = re.search(rf'<select name="{field}".*?</select>', html, re.S).group(0)
    chosen = re.search(r'<option value="([^"]*)" selected>', select)
    return chosen.group(1) or None if chosen else None


def test_the_mapping_is_pre_filled_with_samples_and_nothing_mapped_is_a_clear_error(client_in, user):
    response = client_in.post("/datasets/", {"file": SimpleUploadedFile("support.csv", SUPPORT_CSV), "name": "Help"})
    assert response.status_code == 200
    html = response.content.decode()
    assert _selected(html, "prompt") == "Customer Question" and _selected(html, "response") == "Agent Answer"
    assert _selected(html, "system") is None and _selected(html, "text") is None
    assert "e.g. “Where is my parcel?” · “Can I pay later?” · “Do you ship abroad?”" in html
    assert "“T1” · “T2” · “T3”" in html  # the table of every column
    token = html.split('name="token" value="')[1].split('"')[0]
    samples = html.split('name="column_samples" value="')[1].split('"')[0]

    post = {
        "token": token,
        "filename": "support.csv",
        "columns": ["Customer Question", "Agent Answer", "Ticket"],
        "column_samples": samples.replace("&quot;", '"'),
        "name": "Help",
    }
    response = client_in.post("/datasets/map/", post)  # nothing picked
    html = response.content.decode()
    assert response.status_code == 400 and Dataset.objects.count() == 0
    field = re.search(r'<div class="field has-error" id="field-prompt">.*?</div>\s*</div>', html, re.S).group(0)
    assert "pick the column that holds the prompts" in field
    assert "was not stored" not in html
    assert "e.g. “Where is my parcel?”" not in field  # nothing picked, so no samples beside it...
    assert "“T1” · “T2” · “T3”" in html  # ...but the table of samples survives the refused post

    response = client_in.post("/datasets/map/", {**post, "prompt": "Customer Question"})
    assert response.status_code == 400
    assert re.search(r'id="field-response">.*?is required together with prompt', response.content.decode(), re.S)

    response = client_in.post("/datasets/map/", {**post, "prompt": "Customer Question", "response": "Agent Answer"})
    assert response.status_code == 302  # the file waited through both refusals
    ds = Dataset.objects.get(owner=user)
    assert ds.name == "Help" and ds.rows == 3
    assert dataset_examples(dataset=ds)[0].messages[0] == {"role": "user", "content": "Where is my parcel?"}


def _selects(html: str) -> tuple[list[str], list[str]]:
    """The mapping selects shown at once, and those behind "More ways to map the columns"."""
    form = html.split('id="mapping-form"')[1].split("</form>")[0]
    shown, _, more = form.partition('id="more-roles"')
    return re.findall(r'<select name="(\w+)"', shown), re.findall(r'<select name="(\w+)"', more)


def test_a_file_of_two_columns_shows_only_the_selects_two_columns_can_fill(client_in, user):
    two = b"Question,Reply\nWhere is my parcel?,On its way.\nCan I pay later?,Yes.\n"
    html = client_in.post("/datasets/", {"file": SimpleUploadedFile("two.csv", two)}).content.decode()
    assert _selects(html) == (["prompt", "response"], ["text"])  # no system, chosen or rejected: no third column
    assert '<details id="more-roles">' in html  # closed: nothing in it was picked
    one = b"Story\nOnce upon a time.\nThe end.\n"
    assert _selects(client_in.post("/datasets/", {"file": SimpleUploadedFile("one.csv", one)}).content.decode()) == (
        ["text"],
        [],
    )
    three = client_in.post("/datasets/", {"file": SimpleUploadedFile("s.csv", SUPPORT_CSV)}).content.decode()
    assert _selects(three) == (["prompt", "response"], ["system", "text", "chosen", "rejected"])


def test_the_api_answers_the_guess_and_the_samples_with_its_422(api):
    response = api.post(
        "/api/v1/datasets/", {"file": SimpleUploadedFile("support.csv", SUPPORT_CSV)}, format="multipart"
    )
    assert response.status_code == 422
    err = response.json()["error"]
    assert err["suggested_mapping"] == {"prompt": "Customer Question", "response": "Agent Answer"}
    assert err["column_samples"]["Ticket"] == ["T1", "T2", "T3"]
    body = {"upload_token": err["upload_token"], "filename": "support.csv", "mapping": {}}
    empty = api.post("/api/v1/datasets/map/", body, format="json")
    assert empty.status_code == 400 and empty.json()["error"]["field"] == "prompt"
    expired = api.post(
        "/api/v1/datasets/map/", {**body, "upload_token": "0" * 32, "mapping": err["suggested_mapping"]}, format="json"
    )
    assert expired.status_code == 400 and expired.json()["error"]["field"] == "token"


def test_an_expired_upload_is_said_above_the_mapping_form(client_in):
    post = {"token": "0" * 32, "filename": "support.csv", "columns": ["q", "a"], "prompt": "q", "response": "a"}
    response = client_in.post("/datasets/map/", post)
    assert response.status_code == 400
    assert re.search(r'<div class="errors" role="alert">.*?unknown or expired upload', response.content.decode(), re.S)


def test_a_refused_upload_names_its_file_and_keeps_the_name(client_in):
    response = client_in.post(
        "/datasets/", {"file": SimpleUploadedFile("colours.jsonl", b'{"messages": 1}\n'), "name": "My colours"}
    )
    html = response.content.decode()
    assert response.status_code == 400
    assert "colours.jsonl was not stored: 1 problem found" in html and "colours.jsonl, line 1:" in html
    assert "Choose <b>colours.jsonl</b> again after fixing it" in html
    assert 'value="My colours"' in html


def _with_duplicates(owner, name="colours"):
    rows = memorisable_conversations(4)
    data = "".join(json.dumps({"messages": m}) + "\n" for m in rows + rows[:2] + rows[:1]).encode()
    return services.dataset_create(owner=owner, upload=SimpleUploadedFile(f"{name}.jsonl", data), name=name)


def test_dropping_duplicates_makes_a_new_dataset_and_leaves_the_original(user):
    ds = _with_duplicates(user)
    assert ds.rows == 7 and ds.stats["duplicate_count"] == 3
    copy = services.dataset_deduplicate(dataset=ds)
    assert copy.id != ds.id and copy.owner == user and copy.name == "colours (deduplicated)"
    assert copy.rows == 4 and copy.stats["dropped_duplicates"] == 3 and copy.stats["duplicate_count"] == 0
    assert copy.stats["deduplicated_from"] == str(ds.id)
    assert [ex.messages for ex in dataset_examples(dataset=copy)] == memorisable_conversations(4)
    ds.refresh_from_db()
    assert ds.rows == 7 and len(dataset_examples(dataset=ds)) == 7
    assert services.dataset_deduplicate(dataset=ds).id == copy.id  # asked again: the same copy
    with pytest.raises(services.NoDuplicates):
        services.dataset_deduplicate(dataset=copy)


def test_the_deduplicate_api_is_owner_only(api, api_bob, user, dataset):
    ds = _with_duplicates(user)
    assert api_bob.post(f"/api/v1/datasets/{ds.id}/deduplicate/").status_code == 404
    assert Dataset.objects.count() == 2
    response = api.post(f"/api/v1/datasets/{ds.id}/deduplicate/")
    assert response.status_code == 201 and response.json()["rows"] == 4
    again = api.post(f"/api/v1/datasets/{ds.id}/deduplicate/")
    assert again.status_code == 200 and again.json()["id"] == response.json()["id"]
    none = api.post(f"/api/v1/datasets/{dataset.id}/deduplicate/")
    assert none.status_code == 409 and none.json()["error"]["field"] == "dataset"


def _client_of(owner) -> Client:
    client = Client()  # not pytest-django's `client`: `client_in` is that one, signed in as `user`
    client.force_login(owner)
    return client


def test_the_page_offers_the_drop_and_links_the_copy(client_in, other_user, user):
    ds = _with_duplicates(user)
    html = client_in.get(f"/datasets/{ds.id}/").content.decode()
    assert 'id="drop-duplicates">Drop the 3 duplicates</button>' in html and "data-confirm=" in html
    assert _client_of(other_user).post(f"/datasets/{ds.id}/deduplicate/").status_code == 404
    response = client_in.post(f"/datasets/{ds.id}/deduplicate/")
    copy = Dataset.objects.get(name="colours (deduplicated)")
    assert response.status_code == 302 and response.url == f"/datasets/{copy.id}/"
    html = client_in.get(f"/datasets/{ds.id}/").content.decode()
    assert 'id="drop-duplicates"' not in html and f'href="/datasets/{copy.id}/" id="deduplicated-copy"' in html
    html = client_in.get(f"/datasets/{copy.id}/").content.decode()
    assert f'<a href="/datasets/{ds.id}/">colours</a>, without its 3 duplicates' in html
    assert 'id="drop-duplicates"' not in html


def test_rendered_examples_are_paged(client_in, other_user, user, base_model):
    data = "".join(json.dumps({"messages": m}) + "\n" for m in memorisable_conversations(23)).encode()
    ds = services.dataset_create(owner=user, upload=SimpleUploadedFile("many.jsonl", data))
    count_tokens()
    pages = []
    for n in (1, 2, 3):
        html = client_in.get(f"/datasets/{ds.id}/?max_length=64&page={n}").content.decode()
        pages.append([int(i) for i in re.findall(r'<pre class="sample" data-example="(\d+)">', html)])
        assert f"Page {n} of 3 (23 examples rendered)" in html
        assert ('id="examples-prev"' in html) == (n > 1) and ('id="examples-next"' in html) == (n < 3)
    assert pages == [list(range(1, 11)), list(range(11, 21)), [21, 22, 23]]
    html = client_in.get(f"/datasets/{ds.id}/?max_length=64&page=2").content.decode()
    assert "colour 10" in re.sub(r"<[^>]+>", "", html) and "colour 9" not in re.sub(r"<[^>]+>", "", html)
    assert 'href="?max_length=64&amp;page=3#examples"' in html  # the other parameters are kept
    assert "Page 3 of 3" in client_in.get(f"/datasets/{ds.id}/?page=99").content.decode()
    assert "Page 1 of 3" in client_in.get(f"/datasets/{ds.id}/?page=x").content.decode()
    assert _client_of(other_user).get(f"/datasets/{ds.id}/?page=2").status_code == 404


# --- an upload waiting for its mapping is always an UploadCheck row -----------------------------------


def test_a_small_upload_waiting_for_its_mapping_is_a_check_row_under_an_opaque_name(api, user, other_user, settings):
    from jobs.common.storage import media_path
    from jobs.datasets.models import UploadCheck

    response = api.post(
        "/api/v1/datasets/", {"file": SimpleUploadedFile("support.csv", SUPPORT_CSV)}, format="multipart"
    )
    assert response.status_code == 422
    token = response.json()["error"]["upload_token"]
    check = UploadCheck.objects.get(owner=user)
    assert check.id.hex == token and check.status == "needs_mapping" and check.size_bytes == len(SUPPORT_CSV)
    assert check.columns == ["Customer Question", "Agent Answer", "Ticket"]
    assert not check.file.split("/")[-1].startswith(f"{user.id}-") and token not in check.file, "an opaque name"
    assert media_path(check.file).read_bytes() == SUPPORT_CSV
    assert not list(media_path("datasets/pending").glob(f"{user.id}-*")), "no {owner}-{token} parking file"
    # The check's own page and REST view show it as waiting for the mapping, like a large upload's.
    assert api.get(f"/api/v1/datasets/checks/{check.id}/").json()["upload_token"] == token

    # Another user's token is unknown to you.
    from jobs.datasets.mapping import dataset_create_mapped
    from worker.errors import InputError

    with pytest.raises(InputError):
        dataset_create_mapped(
            owner=other_user,
            token=token,
            filename="support.csv",
            mapping={"prompt": "Customer Question", "response": "Agent Answer"},
        )
    # A mapping naming a column the file lacks is refused before the file is read; the file keeps waiting.
    bad = api.post(
        "/api/v1/datasets/map/",
        {
            "upload_token": token,
            "filename": "support.csv",
            "mapping": {"prompt": "Question", "response": "Agent Answer"},
        },
        format="json",
    )
    assert bad.status_code == 400 and UploadCheck.objects.get(id=check.id).status == "needs_mapping"
    done = api.post(
        "/api/v1/datasets/map/",
        {
            "upload_token": token,
            "filename": "support.csv",
            "mapping": {"prompt": "Customer Question", "response": "Agent Answer"},
        },
        format="json",
    )
    assert done.status_code == 201, done.content
    check.refresh_from_db()
    assert check.status == "ready" and str(check.dataset_id) == done.json()["id"]
    assert not media_path(check.file).exists(), "the parked file moved into place"
    again = api.post(
        "/api/v1/datasets/map/",
        {
            "upload_token": token,
            "filename": "support.csv",
            "mapping": {"prompt": "Customer Question", "response": "Agent Answer"},
        },
        format="json",
    )
    assert again.status_code == 400 and again.json()["error"]["field"] == "token"


def test_an_upload_parked_by_the_older_release_still_finishes(api, user, settings):
    """Before the upgrade a small upload waited as `datasets/pending/{owner}-{token}.csv`; its token still works,
    once, and the file then waits under an opaque name as an UploadCheck."""
    from jobs.common.storage import media_path
    from jobs.datasets.models import UploadCheck

    old = media_path(f"datasets/pending/{user.id}-{'a' * 32}.csv")
    old.parent.mkdir(parents=True)
    old.write_bytes(SUPPORT_CSV)
    done = api.post(
        "/api/v1/datasets/map/",
        {
            "upload_token": "a" * 32,
            "filename": "support.csv",
            "mapping": {"prompt": "Customer Question", "response": "Agent Answer"},
        },
        format="json",
    )
    assert done.status_code == 201, done.content
    assert Dataset.objects.get(id=done.json()["id"]).rows == 3 and not old.exists()
    assert UploadCheck.objects.get(owner=user).status == "ready"


def test_waiting_uploads_expire_with_their_stored_file(user, settings):
    from datetime import timedelta

    from django.utils import timezone

    from jobs.common.storage import media_path
    from jobs.datasets import tasks as dataset_tasks
    from jobs.datasets.mapping import MappingNeeded
    from jobs.datasets.models import UploadCheck

    with pytest.raises(MappingNeeded):
        services.dataset_create(owner=user, upload=SimpleUploadedFile("support.csv", SUPPORT_CSV))
    check = UploadCheck.objects.get(owner=user)
    assert dataset_tasks.expire_uploads() == 0 and media_path(check.file).is_file()  # fresh
    UploadCheck.objects.filter(id=check.id).update(
        updated=timezone.now() - timedelta(hours=settings.UPLOAD_PENDING_HOURS + 1)
    )
    assert dataset_tasks.expire_uploads() == 1
    assert not UploadCheck.objects.exists() and not media_path(check.file).exists()


def _deep(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [900, 10000])
@pytest.mark.parametrize("kind", ["list", "object"])
def test_deeply_nested_column_values_are_a_400_naming_the_nesting(client_in, api, depth, kind):
    deep = _deep(depth, kind)
    body = "".join(f'{{"Question": {deep}, "Reply": "r{i}"}}\n' for i in range(3)).encode()
    page = client_in.post("/datasets/", {"file": SimpleUploadedFile("deep.jsonl", body), "name": "Deep"})
    assert page.status_code == 400 and "levels of nesting" in page.content.decode()
    rest = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("deep.jsonl", body)}, format="multipart")
    assert rest.status_code == 400 and "levels of nesting" in json.dumps(rest.json())


@pytest.mark.parametrize("kind", ["list", "object"])
def test_deeply_nested_posted_samples_are_a_400_naming_the_problem(client_in, kind):
    response = client_in.post("/datasets/", {"file": SimpleUploadedFile("support.csv", SUPPORT_CSV), "name": "Help"})
    token = response.content.decode().split('name="token" value="')[1].split('"')[0]
    post = {
        "token": token,
        "filename": "support.csv",
        "columns": ["Customer Question", "Agent Answer", "Ticket"],
        "column_samples": '{"Ticket": [' + _deep(10000, kind) + "]}",
        "name": "Help",
    }
    response = client_in.post("/datasets/map/", post)
    assert response.status_code == 400 and Dataset.objects.count() == 0
    assert "column samples are nested too deeply" in response.content.decode()
