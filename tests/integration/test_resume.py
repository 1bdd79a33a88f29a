"""A train worker SIGKILLed mid-job: after its lease expires, a new worker picks the job up from the
newest checkpoint (worker_ready -> requeue_orphaned_jobs) and the run ends as if nothing happened."""

import io
import json
import time
import zipfile

import pytest
import torch
from safetensors.torch import load

from tests.conftest import memorisable_conversations
from tests.integration.stack import Stack
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
LEASE_S = 3
CONFIG = {
    "rank": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_preset": "all_linear",
    "learning_rate": 0.01,
    "batch_size": 4,
    "max_seq_length": 128,
    "warmup_ratio": 0.0,
    "seed": 3,
    "max_steps": 60,
    "save_every": 10,
}


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory, tiny_llama):
    s = Stack(tmp_path_factory.mktemp("stack-resume"), database="sqlite", redis="embedded", model_dir=tiny_llama)
    s.env["JOB_LEASE_SECONDS"] = str(LEASE_S)
    try:
        s.start()
        yield s
    finally:
        s.stop()


class Api:
    def __init__(self, stack):
        self.url = stack.url + "/api/v1"
        self.s = stack.session()

    def _headers(self):
        return {"X-CSRFToken": self.s.cookies["csrftoken"], "Referer": self.url}

    def get(self, path, **kw):
        r = self.s.get(self.url + path, timeout=30, **kw)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        return r

    def post(self, path, **kw):
        r = self.s.post(self.url + path, headers=self._headers(), timeout=60, **kw)
        assert r.status_code == 201, (path, r.status_code, r.text[:2000])
        return r.json()

    def submit(self, dataset_id, base_id) -> str:
        return self.post(
            "/jobs/",
            json={
                "name": "resume",
                "dataset": dataset_id,
                "base_model": base_id,
                "config": CONFIG,
                "validation": "none",
            },
        )["id"]

    def metrics_after(self, job_id, after):
        return self.get(f"/jobs/{job_id}/metrics/", params={"after": after}).json()

    def wait_done(self, stack, job_id, limit_s=240) -> dict:
        """Wait until the job ends; it must have succeeded."""
        job = wait_until(
            lambda: self.get(f"/jobs/{job_id}/").json(),
            until=lambda j: j["status"] in ("succeeded", "failed", "cancelled"),
            timeout=limit_s,
            interval=0.5,
            what=f"job {job_id} to finish",
            on_timeout=stack.logs,
        )
        assert job["status"] == "succeeded", (job, stack.logs())
        return job

    def adapter(self, job_id) -> dict[str, torch.Tensor]:
        r = self.get(f"/jobs/{job_id}/adapter/")
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            name = next(n for n in z.namelist() if n.endswith("adapter_model.safetensors"))
            return load(z.read(name))


def test_sigkilled_train_worker_resumes_from_its_checkpoint(crash_stack):
    stack = crash_stack
    api = Api(stack)
    data = "".join(json.dumps({"messages": m}) + "\n" for m in memorisable_conversations(16))
    dataset_id = api.post("/datasets/", files={"file": ("colours.jsonl", data.encode())}, data={"name": "colours"})[
        "id"
    ]
    base_id = next(m["id"] for m in api.get("/base-models/").json() if m["name"] == "tiny-llama")

    # The reference: the same job, straight through.
    straight_id = api.submit(dataset_id, base_id)
    straight = api.wait_done(stack, straight_id)
    assert straight["attempts"] == 1
    expected = {p["step"]: p["loss"] for p in api.metrics_after(straight_id, 0)}
    assert sorted(expected) == list(range(1, 61))

    # The same job again; SIGKILL the train worker once step 30 is reported.
    job_id = api.submit(dataset_id, base_id)
    last = 0

    def last_step() -> int:
        nonlocal last
        points = api.metrics_after(job_id, last)
        if points:
            last = max(p["step"] for p in points)
        return last

    wait_until(
        last_step,
        until=lambda step: step >= 30,
        timeout=180,
        interval=0.05,
        what=f"job {job_id} to report step 30",
        on_timeout=stack.logs,
    )
    code = stack.kill("train")
    assert code == -9
    at_kill = api.get(f"/jobs/{job_id}/").json()
    assert at_kill["status"] == "running" and 30 <= at_kill["step"] < 60, (
        f"the worker must die mid-run (at step {at_kill['step']}); the run is too fast for this machine"
    )

    # The dead worker's lease runs out; a new worker's worker_ready requeues the job.
    time.sleep(LEASE_S + 1.5)
    stack.respawn("train")
    job = api.wait_done(stack, job_id)
    assert job["attempts"] == 2
    assert job["step"] == job["total_steps"] == 60

    points = api.metrics_after(job_id, 0)
    steps = [p["step"] for p in points]
    assert steps == list(range(1, 61)), steps  # no gap, no duplicate
    for p in points:
        assert p["loss"] == pytest.approx(expected[p["step"]], rel=1e-3), (p["step"], p["loss"], expected[p["step"]])

    a, b = api.adapter(straight_id), api.adapter(job_id)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key
