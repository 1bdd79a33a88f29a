"""Small files that unpack into millions of rows or one huge string, uploaded over the API: each is
refused with a 400 naming its limit, and the web process itself barely grows while refusing them
(the file is read in a child process with its own memory limit)."""

import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.datasets.models import Dataset
from jobs.datasets.uploads import upload_check_run
from tests.dataset_bombs import BOMBS

# How much the test process (the web side) may grow while all the bombs are uploaded and refused.
# Measured: about 16 MB (the test client's multipart bodies); reading the same files in this process,
# even with the limits, peaked about 295 MB higher.
MAX_WEB_GROWTH_MB = 64


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """The bombs, written by another process so that building them does not raise this one's peak."""
    folder = tmp_path_factory.mktemp("bombs")
    subprocess.run(
        [sys.executable, "-m", "tests.dataset_bombs", str(folder)],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return {name: folder / name for name in BOMBS}


class PeakRss:
    """Samples this process's resident memory every 5 ms while in the `with` block."""

    def __enter__(self):
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def test_bombs_are_refused_over_the_api_without_growing_the_web_process(api, bombs, settings, capsys):
    settings.DATASET_PARSE_MEMORY_MB = 1024
    payloads = {name: path.read_bytes() for name, path in bombs.items()}  # read before measuring
    answers = {}
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with PeakRss() as rss:
        for name, data in payloads.items():
            answers[name] = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile(name, data)}, format="multipart")
    elapsed = time.monotonic() - started
    maxrss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before) / 1024
    with capsys.disabled():
        print(
            f"\nbomb uploads: {elapsed:.1f} s, web RSS peak +{rss.growth_mb:.1f} MB "
            f"(sampled), ru_maxrss +{maxrss_growth_mb:.1f} MB; limit {MAX_WEB_GROWTH_MB} MB"
        )
    assert rss.growth_mb < MAX_WEB_GROWTH_MB and maxrss_growth_mb < MAX_WEB_GROWTH_MB
    later = 0
    for name, response in answers.items():
        if len(payloads[name]) > settings.DATASET_CHECK_INLINE_BYTES:
            # Over the inline size the request only stores the file: the background check refuses it.
            assert response.status_code == 202, (name, response.content[:300])
            assert upload_check_run(check_id=response.json()["id"]) == "failed"
            check = api.get(f"/api/v1/datasets/checks/{response.json()['id']}/").json()
            message = check["problems"][0]
            later += 1
        else:
            assert response.status_code == 400, (name, response.content[:300])
            error = response.json()["error"]
            assert error["field"] == "file"
            message = error["message"]
        assert message.startswith(name) and f"(limit {BOMBS[name]})" in message, message
    assert later >= 1, "a bomb bigger than DATASET_CHECK_INLINE_BYTES goes through the background check"
    assert Dataset.objects.count() == 0
    assert not [p for p in (settings.MEDIA_ROOT / "datasets").rglob("*") if p.is_file()]


def test_a_bomb_on_the_upload_page_shows_the_limit(client_in, bombs):
    response = client_in.post(
        "/datasets/", {"file": SimpleUploadedFile("deep.json", bombs["deep.json"].read_bytes()), "name": ""}
    )
    assert response.status_code == 400
    assert (
        "deep.json, line 1: has more than 64 levels of nesting (limit DATASET_MAX_NESTING)" in response.content.decode()
    )


def test_settings_set_the_limits(api, settings):
    settings.DATASET_MAX_ROWS = 2
    rows = "\n".join(json.dumps({"prompt": "Hi", "completion": str(i)}) for i in range(3))
    response = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("d.jsonl", rows.encode())}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "d.jsonl: line 3: has more than 2 rows (limit DATASET_MAX_ROWS)"
    settings.DATASET_MAX_ROWS = 3
    settings.DATASET_PARSE_SECONDS = 30
    assert (
        api.post(
            "/api/v1/datasets/", {"file": SimpleUploadedFile("d.jsonl", rows.encode())}, format="multipart"
        ).status_code
        == 201
    )


def test_an_upload_that_runs_out_of_memory_or_time_is_a_400(api, settings, bombs):
    settings.DATASET_MAX_FIELD_CHARS = settings.DATASET_MAX_TOTAL_CHARS = 10**9
    settings.DATASET_PARSE_MEMORY_MB = 300
    settings.DATASET_PARSE_SECONDS = 120  # on a busy machine the memory limit, not the clock, must strike first
    data = bombs["huge_string.parquet"].read_bytes()
    response = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("h.parquet", data)}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "h.parquet: needs more than 300 MB to read (limit DATASET_PARSE_MEMORY_MB)"
    )
    settings.DATASET_PARSE_SECONDS = 0.001  # less than starting Python takes
    response = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("h.parquet", data)}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "h.parquet: took longer than 0.001 s to read (limit DATASET_PARSE_SECONDS)"
    )
