"""Several machines sharing only PostgreSQL, Redis and an S3 store (moto's server over HTTP): the web host
(web, background, beat), a train host, a second train host and a chat host, each with its own empty
LORA_STUDIO_VAR. The base model is registered from the store; a dataset uploaded on the web host trains on
a train host that is SIGKILLed after its first checkpoint, the job resumes from the store on the second
train host, the web host serves the adapter zip from the store, and the chat host answers with it."""

import io
import secrets
import time
import zipfile
from pathlib import Path

import pytest

from tests.integration.stack import csrf_of, read_sse
from tests.integration.test_faults import SWEEP_S, FaultStack, Run
from tests.object_store import new_bucket, store_env, stored_keys, upload_folder
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
HOSTS = ("train", "train2", "infer")
# Longer than test_faults' lease: five processes and moto share 2 cores here, and a late heartbeat would
# count as one more crash.
LEASE_S = 12
STEPS = 16
# Evaluations at step 10 (where the first train host is held and killed) and at the end.
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
    "max_steps": STEPS,
    "save_every": 5,
    "eval_every": 10,
}


def host_env(tmp: Path, host: str) -> dict[str, str]:
    var = tmp / host / "var"
    return {"LORA_STUDIO_VAR": str(var), "MEDIA_ROOT": str(var / "media")}


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, tiny_llama, s3_endpoint):
    tmp = tmp_path_factory.mktemp("hosts")
    bucket = new_bucket(s3_endpoint)
    model_url = f"s3://{bucket}/models/tiny-llama"
    upload_folder(s3_endpoint, tiny_llama, model_url)
    stack = FaultStack(tmp, database="postgres", redis="ephemeral", model_dir=model_url)
    stack.env.update(
        host_env(tmp, "web"),
        **store_env(s3_endpoint, bucket),
        SECRET_KEY=secrets.token_urlsafe(40),
        JOB_LEASE_SECONDS=str(LEASE_S),
        SWEEP_SECONDS=str(SWEEP_S),
        LORA_STUDIO_FAILPOINT_DIR=str(tmp / "failpoints"),
    )
    for host in HOSTS:
        stack.role_env[host] = host_env(tmp, host)
    # The first train host holds in its first evaluation (step 10, after the checkpoint at step 5).
    stack.role_env["train"]["LORA_STUDIO_FAILPOINTS"] = "evaluate=60"
    stack.bucket = bucket
    (tmp / "var").mkdir()  # beat's schedule file (the web host's scratch, not its media)
    try:
        yield stack.start()
    finally:
        stack.stop()


def media(stack, host: str) -> Path:
    return Path(stack.env_for(host)["MEDIA_ROOT"])


def test_two_hosts_train_resume_download_and_chat_through_the_store(hosts, s3_endpoint):
    stack = hosts
    started = time.monotonic()
    run = Run(stack)  # the dataset, uploaded through the web host
    job_id = run.api.post(
        "/jobs/",
        json={
            "name": "hosts",
            "dataset": run.dataset,
            "base_model": run.base,
            "config": CONFIG,
            "validation": "split",
            "validation_percent": 25,
            "validation_seed": 1,
        },
    )["id"]
    assert stored_keys(s3_endpoint, stack.bucket, f"studio/jobs/{job_id}/data/") == [
        f"studio/jobs/{job_id}/data/eval.jsonl",
        f"studio/jobs/{job_id}/data/train.jsonl",
    ]

    # Once the first train host has the job, the second one boots (it would take the job otherwise).
    wait_until(
        lambda: run.api.get(f"/jobs/{job_id}/").json()["status"],
        until=lambda status: status == "running",
        timeout=120,
        interval=0.2,
        what=f"job {job_id} to run",
        on_timeout=stack.logs,
    )
    stack.spawn_like("train", "train2")
    phases = {"running": time.monotonic() - started}
    # The first train host dies after its first checkpoint reached the store.
    stack.wait_failpoint("evaluate")
    ckpts = stored_keys(s3_endpoint, stack.bucket, f"studio/jobs/{job_id}/checkpoints/")
    assert ckpts and all("/step-000005/" in key for key in ckpts), ckpts
    assert stack.kill("train") == -9
    phases["killed"] = time.monotonic() - started
    # The second train host, its disk empty, takes the job once the dead one's lease runs out.
    job = run.api.wait_done(stack, job_id)
    phases["resumed and done"] = time.monotonic() - started
    assert job["attempts"] == 2, (stack.job_events(job_id), stack.logs())
    assert job["step"] == job["total_steps"] == STEPS
    assert [p["step"] for p in run.api.metrics_after(job_id, 0)] == list(range(1, STEPS + 1))
    resumed = [e["message"] for e in stack.job_events(job_id) if e["kind"] == "resume"]
    assert resumed == ["resumed from checkpoint at step 5"], stack.job_events(job_id)

    # Each host holds only what it used; the store holds the job's outputs, and no checkpoint once it ended.
    job_files = f"jobs/{job_id}"
    assert not (media(stack, "train") / job_files / "adapter").exists()
    assert (media(stack, "train2") / job_files / "data" / "train.jsonl").is_file()
    assert (media(stack, "train2") / job_files / "adapter" / "adapter_model.safetensors").is_file()
    assert not (media(stack, "train2") / "datasets").exists()  # the job's snapshot is enough
    assert not (media(stack, "web") / job_files / "adapter").exists()
    keys = stored_keys(s3_endpoint, stack.bucket, f"studio/{job_files}/")
    assert not [k for k in keys if "/checkpoints/" in k]
    assert f"studio/{job_files}/adapter/adapter_model.safetensors" in keys
    assert f"studio/{job_files}/evaluation.json" in keys
    for host in ("train2",):
        assert (
            Path(stack.env_for(host)["LORA_STUDIO_VAR"])
            / "model-cache"
            / stack.bucket
            / "models"
            / "tiny-llama"
            / ".complete"
        ).is_file()

    # The web host serves the zip from the store.
    r = run.api.get(f"/jobs/{job_id}/adapter/")
    assert r.headers["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert any(n.endswith("adapter_model.safetensors") for n in names) and any(
        n.endswith("evaluation.json") for n in names
    ), names
    assert not list((media(stack, "web") / job_files).glob("*.zip"))

    # The chat host answers with the adapter it fetched from the store.
    s = run.api.s
    page = s.get(f"{stack.url}/jobs/{job_id}/compare/").text
    r = s.post(
        f"{stack.url}/api/v1/jobs/{job_id}/chat/",
        json={"prompt": "colour 2", "max_new_tokens": 12},
        headers={"X-CSRFToken": csrf_of(s, page), "Referer": stack.url},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    query = "&".join(f"answer={a['id']}" for a in r.json()["answers"])
    done = {}
    with s.get(f"{stack.url}/api/v1/chats/{r.json()['session']}/events/?{query}", stream=True, timeout=120) as r:
        for event, data in read_sse(r, lambda e, d: False, limit_s=120):
            assert event != "error", (data, stack.logs())
            if event == "done":
                done[data["side"]] = data["text"]
    assert set(done) == {"base", "adapter"} and done["adapter"] != done["base"], done
    assert (media(stack, "infer") / job_files / "adapter" / "adapter_model.safetensors").is_file()
    assert (
        Path(stack.env_for("infer")["LORA_STUDIO_VAR"])
        / "model-cache"
        / stack.bucket
        / "models"
        / "tiny-llama"
        / ".complete"
    ).is_file()
    phases["chat"] = time.monotonic() - started
    print("two hosts, seconds after the stack started:", {k: round(v, 1) for k, v in phases.items()})
