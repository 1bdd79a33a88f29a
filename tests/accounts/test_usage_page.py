"""The Usage page writes its figures in human units with a bar (the API keeps the raw counts)."""

from jobs.accounts.views import usage_for_people


def row(limit, used, allowed, label="x"):
    return {"limit": limit, "label": label, "used": used, "allowed": allowed}


def test_usage_rows_in_human_units():
    storage = usage_for_people(row("storage_bytes", 14566388, 21474836480))
    assert storage["text"] == "13.9 MB of 20 GB" and storage["label"] == "storage" and storage["percent"] == 0
    time = usage_for_people(row("compute_seconds_per_day", 78, 43200))
    assert time["text"] == "1 min 18 s of 12 h today" and time["label"] == "training time"
    jobs = usage_for_people(row("active_jobs", 3, 4, "queued, running and paused jobs"))
    assert jobs["text"] == "3 of 4" and jobs["percent"] == 75 and jobs["label"] == "queued, running and paused jobs"
    assert (
        usage_for_people(row("webhooks", 7, 5))["percent"] == 100
        and usage_for_people(row("api_keys", 0, 0))["percent"] == 100
    )


def test_the_usage_page_shows_units_and_bars_and_the_api_raw_figures(settings, client_in, api):
    settings.QUOTA_STORAGE_BYTES = 21474836480
    settings.QUOTA_COMPUTE_SECONDS_PER_DAY = 43200
    html = client_in.get("/account/usage/").content.decode()
    storage = html[html.index('id="usage-storage_bytes"') :].split("</tr>")[0]
    assert "Storage" in storage and "of 20 GB" in storage and '<progress class="usage-bar" max="100"' in storage
    compute = html[html.index('id="usage-compute_seconds_per_day"') :].split("</tr>")[0]
    assert "0 s of 12 h today" in compute and "Training time" in compute
    assert "21474836480" not in html and "43200" not in html
    rows = {r["limit"]: r for r in api.get("/api/v1/usage/").json()}
    assert rows["storage_bytes"]["allowed"] == 21474836480 and rows["storage_bytes"]["label"] == "storage (bytes)"
