"""Fit by memory with real workers: two train workers declare their capacities (WORKER_CAPACITY), a small
one and a big one. A job too big for the small one runs on the big one (and shows as its current job); a job
too big for both waits, saying for what (ROUTING_NO_FIT=wait, the default), and neither idle worker starts it
however often they are woken; the Workers API lists both with their devices and memory, and a killed worker
leaves the list within three heartbeats."""

import json
import time

import pytest
import requests

from tests.conftest import memorisable_conversations
from tests.integration.stack import running_stack
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
# On examples longer than 512 tokens the tiny model's estimates (CPU) are about 403 MB at batch 4 x 64 tokens,
# 488 MB at 32 x 256 and 1103 MB at 128 x 512.
SMALL = {"WORKER_CAPACITY": json.dumps({"device": "cpu", "count": 1, "memory_mb": 450})}
BIG = {"WORKER_CAPACITY": json.dumps({"device": "cpu", "count": 1, "memory_mb": 800})}
BASE = {
    "rank": 4,
    "alpha": 8,
    "dropout": 0.0,
    "target_preset": "attention",
    "learning_rate": 0.01,
    "warmup_ratio": 0.0,
    "seed": 1,
    "max_steps": 3,
}
TOO_BIG_FOR_SMALL = {**BASE, "batch_size": 32, "max_seq_length": 256}
TOO_BIG_FOR_BOTH = {**BASE, "batch_size": 128, "max_seq_length": 512}


def test_jobs_run_only_where_they_fit(tmp_path, tiny_llama):
    env = {"WORKER_HEARTBEAT_SECONDS": "2", "SWEEP_SECONDS": "1"}
    with running_stack(tmp_path, tiny_llama, env=env, train_workers={"train-small": SMALL, "train-big": BIG}) as stack:
        # Staff see the workers' names and hosts (users see only capacities): alice is the admin here.
        stack.manage(
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model as g; g().objects.filter(username='alice').update(is_staff=True)",
        )
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {stack.api_key()}"
        url = stack.url + "/api/v1"

        def workers():
            r = api.get(url + "/workers/", timeout=30)
            assert r.status_code == 200, r.text
            return r.json()

        wait_until(
            workers,
            until=lambda listing: len(listing["workers"]) >= 2,
            timeout=60,
            interval=0.3,
            what="both train workers to announce themselves",
            on_timeout=stack.logs,
        )
        listed = {w["name"].split("-")[1]: w for w in workers()["workers"]}
        assert (listed["small"]["memory_mb"], listed["big"]["memory_mb"]) == (450, 800)
        assert listed["big"]["device"] == "cpu" and listed["big"]["count"] == 1

        # Long examples: the estimate pads each micro-batch to its longest example, so max_seq_length counts.
        long = [
            [m[0], {"role": "assistant", "content": m[1]["content"] + " and more" * 400}]
            for m in memorisable_conversations(8)
        ]
        data = "".join(json.dumps({"messages": m}) + "\n" for m in long).encode()
        dataset = api.post(url + "/datasets/", files={"file": ("c.jsonl", data)}, data={"name": "c"}).json()["id"]
        base = next(m["id"] for m in api.get(url + "/base-models/").json() if m["name"] == "tiny-llama")

        def submit(config, to=url):
            return api.post(
                to + "/jobs/",
                json={"dataset": dataset, "base_model": base, "config": config, "validation": "none"},
                timeout=60,
            )

        r = submit(TOO_BIG_FOR_SMALL)
        assert r.status_code == 201 and r.json()["waiting_for"] == "", r.text
        job = r.json()["id"]
        seen_running_on = set()

        def status_noting_its_worker() -> str:
            status = api.get(f"{url}/jobs/{job}/").json()["status"]
            if status not in ("succeeded", "failed"):
                seen_running_on.update(w["name"] for w in workers()["workers"] if (w["job"] or {}).get("id") == job)
            return status

        status = wait_until(
            status_noting_its_worker,
            until=lambda status: status in ("succeeded", "failed"),
            timeout=90,
            interval=0.2,
            what=f"job {job} to end",
            on_timeout=stack.logs,
        )
        assert status == "succeeded", stack.logs()
        assert stack.job_field(job, "worker").endswith(f":{stack.process('train-big').pid}")
        assert seen_running_on == {listed["big"]["name"]}

        waiting = submit(TOO_BIG_FOR_BOTH)  # ROUTING_NO_FIT=wait, the default (refuse: tests/training/test_routing.py)
        assert waiting.status_code == 201, waiting.text
        need = waiting.json()["waiting_for"]
        assert need.startswith("waits for a worker with ") and need.endswith("; the live ones have 0.8 GB, 0.5 GB"), (
            need
        )
        assert float(need.split(" with ")[1].split()[0]) * 1024 > 800, "more than the biggest worker has"
        assert waiting.json()["waiting_reason"] == need
        time.sleep(3)  # both workers idle, woken by the create and by every sweep (1 s)...
        detail = api.get(f"{url}/jobs/{waiting.json()['id']}/").json()
        assert detail["status"] == "queued" and detail["attempts"] == 0, stack.logs()  # ...and neither starts it
        assert detail["waiting_reason"] == need
        listing = workers()
        assert listing["queued_jobs"] == 1 and not any(w["busy"] for w in listing["workers"])
        assert listing["waiting"] == [{"id": waiting.json()["id"], "name": detail["name"], "reason": need}]

        stack.kill("train-small")  # killed outright: its announcement expires within three heartbeats (6 s)
        wait_until(
            workers,
            until=lambda listing: len(listing["workers"]) <= 1,
            timeout=10,
            interval=0.3,
            what="the killed worker to leave the list",
        )
        assert [w["name"] for w in workers()["workers"]] == [listed["big"]["name"]]
