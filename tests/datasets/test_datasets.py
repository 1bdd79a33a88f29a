import json

from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.datasets.models import Dataset


def upload(client, content: bytes, name="data.jsonl"):
    return client.post("/datasets/", {"file": SimpleUploadedFile(name, content), "name": ""})


def stored_files(settings):
    folder = settings.MEDIA_ROOT / "datasets"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_upload_is_stored_under_an_opaque_id(client_in, user, chat_file, settings):
    response = upload(client_in, chat_file.read_bytes(), name="../../etc/passwd.jsonl")
    assert response.status_code == 302
    ds = Dataset.objects.get(owner=user)
    assert ds.rows == 8 and ds.schema == "messages" and len(ds.sha256) == 64
    assert ds.name == "passwd.jsonl"
    files = stored_files(settings)
    assert files == sorted([ds.file.split("/")[-1], ds.normalized_file.split("/")[-1]])
    assert not any("passwd" in f for f in files)


def test_bad_upload_names_the_line_and_stores_nothing(client_in, settings):
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    bad = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]})
    response = upload(client_in, f"{good}\n{good}\n{bad}\n{{oops\n".encode())
    assert response.status_code == 400
    page = response.content.decode()
    assert "data.jsonl was not stored: 2 problems found" in page
    assert "Choose <b>data.jsonl</b> again after fixing it" in page
    assert "data.jsonl, line 3: messages[1].role must be one of system, user, assistant, got &quot;bot&quot;" in page
    assert "data.jsonl, line 4: is not valid JSON" in page
    assert Dataset.objects.count() == 0 and stored_files(settings) == []


def test_upload_over_the_size_limit_is_refused(client_in, chat_file, settings):
    settings.DATASET_MAX_BYTES = 100
    response = upload(client_in, chat_file.read_bytes())
    assert response.status_code == 400
    assert "is larger than the limit" in response.content.decode()
    assert Dataset.objects.count() == 0 and stored_files(settings) == []


def test_demo_dataset_in_one_click(client_in, user):
    response = client_in.post("/datasets/demo/")
    ds = Dataset.objects.get(owner=user)
    assert response.status_code == 302 and response["Location"] == f"/jobs/new/?dataset={ds.id}"
    assert ds.rows >= 100
    client_in.post("/datasets/demo/")
    assert Dataset.objects.filter(owner=user).count() == 1


def test_pages_need_a_login(client, db):
    for url in ("/datasets/", "/jobs/", "/jobs/new/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_too_few_examples_are_accepted_with_a_visible_warning_and_the_help_is_one_line(client_in, user):
    """5 examples are stored (never refused) and the check page says they are too few; the upload's help is one
    line with the formats, each with an example, one click away."""
    html = client_in.get("/datasets/").content.decode()
    assert '<details id="upload-formats">' in html and "Chat examples (<code>messages</code>)" in html
    assert "Prompt and answer" in html and "Preference pairs" in html
    lines = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(5)
    ]
    response = upload(client_in, "".join(json.dumps(line) + "\n" for line in lines).encode())
    assert response.status_code == 302
    ds = Dataset.objects.get(owner=user)
    page = client_in.get(f"/datasets/{ds.id}/").content.decode()
    warning = page.split('id="ds-size-warning"')[1].split("</p>")[0]
    assert "Too few to train well." in warning and "Only 5 examples" in warning and "50 or more" in warning
