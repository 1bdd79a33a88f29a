"""The train queue is fair with a real worker: Alice queues three jobs, then Bob queues one; Bob's job is
the next to start after Alice's running one, before her other two (then the rest is cancelled)."""

import datetime as dt
import json

import pytest

from tests.conftest import memorisable_conversations
from tests.integration.stack import running_stack
from tests.integration.test_resume import Api
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
CONFIG = {
    "rank": 4,
    "alpha": 8,
    "dropout": 0.0,
    "target_preset": "attention",
    "learning_rate": 0.01,
    "batch_size": 4,
    "max_seq_length": 64,
    "warmup_ratio": 0.0,
    "seed": 1,
    "max_steps": 25,
}


def test_one_worker_serves_users_in_turn(tmp_path, tiny_llama):
    with running_stack(tmp_path, tiny_llama) as stack:
        alice, bob = Api(stack), Api(stack)
        bob.s = stack.session("bob")
        data = "".join(json.dumps({"messages": m}) + "\n" for m in memorisable_conversations(8)).encode()

        def submit(api, name):
            ds = api.post("/datasets/", files={"file": ("c.jsonl", data)}, data={"name": name})["id"]
            base = next(m["id"] for m in api.get("/base-models/").json() if m["name"] == "tiny-llama")
            return api.post(
                "/jobs/", json={"name": name, "dataset": ds, "base_model": base, "config": CONFIG, "validation": "none"}
            )["id"]

        first = submit(alice, "a1")
        wait_until(
            lambda: alice.get(f"/jobs/{first}/").json()["status"],
            until=lambda status: status == "running",
            timeout=60,
            interval=0.1,
            what=f"job {first} to run",
            on_timeout=stack.logs,
        )
        later = [submit(alice, "a2"), submit(alice, "a3")]
        bobs = submit(bob, "b1")
        alice.wait_done(stack, first)
        # The next job the worker takes is Bob's: once it runs, neither of Alice's later jobs has started. The
        # rest of the queue is cancelled (waiting for all four to train would only repeat the same turn).
        wait_until(
            lambda: bob.get(f"/jobs/{bobs}/").json()["status"],
            until=lambda status: status in ("running", "succeeded"),
            timeout=60,
            interval=0.1,
            what=f"Bob's job {bobs} to start",
            on_timeout=stack.logs,
        )

        # One worker: Bob's job started after Alice's first ended, and before either of her later two (the tiny
        # job may already have ended and the worker taken her next one by now: compare when each one started).
        def when(job_id: str, field: str) -> dt.datetime | None:
            value = stack.job_field(job_id, field)
            return None if value is None else dt.datetime.fromisoformat(value)

        bob_started = when(bobs, "started")
        assert bob_started is not None and bob_started >= when(first, "finished"), stack.logs()
        for job_id in later:
            started = when(job_id, "started")
            assert started is None or started > bob_started, (job_id, started, bob_started, stack.logs())
        for api, job_id in [(bob, bobs), (alice, later[0]), (alice, later[1])]:
            r = api.s.post(f"{api.url}/jobs/{job_id}/cancel/", headers=api._headers(), timeout=30)
            assert r.status_code in (200, 202, 409), r.text  # 409: Bob's already ended
