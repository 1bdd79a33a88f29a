"""A burst of uploads against the real web process (uvicorn, a real Redis): the parse children it starts stay
within PARSE_CHILDREN_PER_USER / PARSE_CHILDREN_TOTAL, the rest are refused with 429 and Retry-After, and the
web process's memory stays bounded."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.integration.stack import running_stack

pytestmark = pytest.mark.integration


def jsonl(n: int) -> bytes:
    def row(i: int) -> dict:
        return {"messages": [{"role": "user", "content": f"question {i} " * 20}, {"role": "assistant", "content": "a"}]}

    return "".join(json.dumps(row(i)) + "\n" for i in range(n)).encode()


class ChildWatch:
    """Samples the web process: how many parse children it runs at once, and its own peak resident memory."""

    def __init__(self, pid: int):
        self.web = psutil.Process(pid)
        self.most_children = 0
        self.peak_rss = self.web.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                children = [
                    c for c in self.web.children(recursive=True) if "worker.data.sandbox" in " ".join(c.cmdline())
                ]
                self.most_children = max(self.most_children, len(children))
                self.peak_rss = max(self.peak_rss, self.web.memory_info().rss)
            except psutil.Error:  # a child ended while it was looked at
                pass
            time.sleep(0.01)

    def __enter__(self) -> ChildWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_a_burst_of_uploads_runs_at_most_the_caps_children_and_refuses_the_rest_with_429(tmp_path, tiny_llama):
    env = {"PARSE_CHILDREN_PER_USER": "2", "PARSE_CHILDREN_TOTAL": "3", "DATASET_CHECK_INLINE_BYTES": "1048576"}
    with running_stack(tmp_path, tiny_llama, redis="ephemeral", env=env, web_only=True) as stack:
        keys = {"alice": stack.api_key("alice"), "bob": stack.api_key("bob")}
        data = jsonl(2000)  # about 0.5 MB: checked during the request, in a parse child

        def upload(who: str) -> requests.Response:
            return requests.post(
                stack.url + "/api/v1/datasets/",
                headers={"Authorization": f"Bearer {keys[who]}"},
                files={"file": ("burst.jsonl", data)},
                timeout=120,
            )

        # One upload first: the web process imports the tokenizer's libraries once (counting tokens of small files).
        assert upload("alice").status_code == 201
        watch = ChildWatch(stack.process("web").pid)
        before = watch.peak_rss
        with watch, ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(upload, ["alice"] * 10 + ["bob"] * 10))
        statuses = [r.status_code for r in answers]
        assert set(statuses) <= {201, 429}, [(r.status_code, r.text[:300]) for r in answers if r.status_code >= 300]
        refused = [r for r in answers if r.status_code == 429]
        assert refused and 201 in statuses, statuses
        for r in refused:
            assert int(r.headers["Retry-After"]) >= 1
            error = r.json()["error"]
            assert "again" in error["message"] and "Traceback" not in r.text
        assert 1 <= watch.most_children <= 3, watch.most_children
        # Each child holds at most DATASET_PARSE_MEMORY_MB apart from this process; the web process itself
        # receives 20 files of 0.5 MB and holds no dataset: far below one child's allowance.
        assert watch.peak_rss - before < 200 * 1024 * 1024, (before, watch.peak_rss)
        # Once the burst is over every slot is free again: another upload goes through.
        assert upload("alice").status_code == 201
