"""The whole core loop through real processes: web (uvicorn), Celery workers, Redis, a database."""

import io
import json
import re
import zipfile

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import memorisable_conversations
from tests.integration.stack import csrf_of, read_sse

pytestmark = pytest.mark.integration
FAST = {
    "rank": "8",
    "alpha": "16",
    "dropout": "0",
    "target_preset": "all_linear",
    "target_modules": "",
    "epochs": "12",
    "learning_rate": "0.01",
    "batch_size": "4",
    "grad_accum": "1",
    "max_seq_length": "128",
    "warmup_ratio": "0",
    "lr_scheduler": "linear",
    "weight_decay": "0",
    "seed": "3",
    "bias": "none",
    "validation": "none",
    "validation_percent": "10",
    "validation_seed": "42",
}


def upload_and_submit(stack, s, **over):
    page = s.get(stack.url + "/datasets/").text
    data = "".join(json.dumps({"messages": m}) + "\n" for m in memorisable_conversations())
    r = s.post(
        stack.url + "/datasets/",
        data={"csrfmiddlewaretoken": csrf_of(s, page), "name": "colours"},
        files={"file": ("colours.jsonl", data.encode())},
    )
    assert r.status_code == 200 and "Uploaded colours: 8 examples" in r.text
    dataset_id = re.search(r"/jobs/new/\?dataset=([0-9a-f-]{36})", r.text).group(1)
    page = s.get(stack.url + f"/jobs/new/?dataset={dataset_id}").text
    base_id = re.search(r'<option value="([0-9a-f-]{36})"[^>]*>tiny-llama', page).group(1)
    r = s.post(
        stack.url + "/jobs/new/",
        data={
            "csrfmiddlewaretoken": csrf_of(s, page),
            "name": "e2e",
            "base_model": base_id,
            "dataset": dataset_id,
            **FAST,
            **over,
        },
        headers={"Referer": stack.url},
        allow_redirects=False,
    )
    assert r.status_code == 302, r.text[:2000]
    return r.headers["Location"].rstrip("/").split("/")[-1]


def test_upload_train_watch_download_compare(stack, tiny_llama):
    s = stack.session()
    job_id = upload_and_submit(stack, s)

    # Live events: the stored points are replayed and new ones follow, until the final status.
    with s.get(f"{stack.url}/jobs/{job_id}/events/", stream=True, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        seen = list(read_sse(r, lambda e, d: e == "status" and d["status"] in ("succeeded", "failed", "cancelled")))
    final = [d for e, d in seen if e == "status"][-1]
    assert final["status"] == "succeeded", (final, stack.logs())
    steps = [d["step"] for e, d in seen if e == "metric"]
    assert steps == list(range(1, 25)), steps

    # A late tab asking after step 20 gets only what follows, then the status.
    with s.get(f"{stack.url}/jobs/{job_id}/events/", stream=True, timeout=30, headers={"Last-Event-ID": "20"}) as r:
        late = list(read_sse(r, lambda e, d: e == "status"))
    assert [d["step"] for e, d in late if e == "metric"] == [21, 22, 23, 24]

    # The adapter zip loads with PEFT and changes the model's answer.
    r = s.get(f"{stack.url}/jobs/{job_id}/download/")
    assert r.status_code == 200 and r.headers["Content-Disposition"].startswith("attachment;")
    folder = stack.tmp / "unzipped"
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "colour 2"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    base_out = base.generate(**prompt, max_new_tokens=16, do_sample=False)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), folder)
    adapted_out = adapted.generate(**prompt, max_new_tokens=16, do_sample=False)
    assert not torch.equal(base_out, adapted_out)
    assert '"blue"' in tok.decode(adapted_out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)

    # Compare: both sides answer through the infer worker, streamed over SSE.
    page = s.get(f"{stack.url}/jobs/{job_id}/compare/").text
    # As the compare page's script does: the REST API with the session cookie and the CSRF token.
    r = s.post(
        f"{stack.url}/api/v1/jobs/{job_id}/chat/",
        json={"prompt": "colour 2", "max_new_tokens": 16},
        headers={"X-CSRFToken": csrf_of(s, page), "Referer": stack.url},
    )
    assert r.status_code == 201, r.text
    answers = [a["id"] for a in r.json()["answers"]]
    session_id = r.json()["session"]
    query = "&".join(f"answer={a}" for a in answers)
    done = {}
    with s.get(f"{stack.url}/api/v1/chats/{r.json()['session']}/events/?{query}", stream=True, timeout=120) as r:
        # The server ends the stream by itself once both answers are done.
        for event, data in read_sse(r, lambda e, d: False):
            if event == "done":
                done[data["side"]] = data["text"]
            assert event != "error", (data, stack.logs())
    assert set(done) == {"base", "adapter"}
    assert '"blue"' in done["adapter"] and done["base"] != done["adapter"]

    # Both sides at once: one batched generate on the worker, so each side's first token reaches
    # the client before the other side has finished. Subscribe to the whole session first, then
    # ask again in it for a long answer.
    with s.get(f"{stack.url}/chats/{session_id}/events/", stream=True, timeout=120) as stream:
        lines = stream.iter_lines(decode_unicode=True)
        assert next(lines).startswith(": connected")  # subscribed before anything is asked
        r = s.post(
            f"{stack.url}/api/v1/jobs/{job_id}/chat/",
            json={"prompt": "colour 2", "max_new_tokens": 120, "session": session_id},
            headers={"X-CSRFToken": csrf_of(s, page), "Referer": stack.url},
        )
        assert r.status_code == 201, r.text
        second = {a["id"] for a in r.json()["answers"]}
        order, finished = [], set()
        for event, data in read_sse(
            lines,
            lambda e, d: e == "done" and d["answer"] in second and len(finished | {d["answer"]}) == 2,
            limit_s=120,
        ):
            if data.get("answer") in second:
                order.append((event, data["answer"]))
                if event == "done":
                    finished.add(data["answer"])
            assert event != "error", (data, stack.logs())
    firsts = {a: order.index(("token", a)) for a in second}
    dones = {a: order.index(("done", a)) for a in second}
    assert all(firsts[a] < min(dones.values()) for a in second), order


def test_cancel_through_the_web_stops_the_worker(stack):
    s = stack.session()
    job_id = upload_and_submit(stack, s, epochs="100", seed="5")
    page = s.get(f"{stack.url}/jobs/{job_id}/").text
    at_cancel = None
    with s.get(f"{stack.url}/jobs/{job_id}/events/", stream=True, timeout=60) as r:
        events = read_sse(r, lambda e, d: e == "status" and d["status"] == "cancelled")
        for event, data in events:
            if event == "metric" and data["step"] == 3:
                s.post(
                    f"{stack.url}/jobs/{job_id}/cancel/",
                    data={"csrfmiddlewaretoken": csrf_of(s, page)},
                    headers={"Referer": stack.url},
                )
                at_cancel = s.get(f"{stack.url}/api/v1/jobs/{job_id}/").json()["step"]
    job = s.get(f"{stack.url}/api/v1/jobs/{job_id}/").json()
    # The flag is read before every step: at most the step in flight finishes after the request.
    assert job["status"] == "cancelled" and at_cancel <= job["step"] <= at_cancel + 1 < job["total_steps"]


def test_another_user_sees_nothing(stack):
    alice = stack.session()
    job_id = upload_and_submit(stack, alice, epochs="1")
    bob = stack.session("bob")
    for path in (f"/jobs/{job_id}/", f"/jobs/{job_id}/events/", f"/jobs/{job_id}/download/", f"/api/v1/jobs/{job_id}/"):
        assert bob.get(stack.url + path).status_code == 404, path


def test_pause_frees_the_worker_and_resume_continues(stack):
    s = stack.session()
    job_id = upload_and_submit(stack, s, epochs="30", seed="9")
    page = s.get(f"{stack.url}/jobs/{job_id}/").text
    token = csrf_of(s, page)
    with s.get(f"{stack.url}/jobs/{job_id}/events/", stream=True, timeout=60) as r:
        for event, data in read_sse(r, lambda e, d: e == "status" and d["status"] == "paused"):
            if event == "metric" and data["step"] == 3:
                s.post(
                    f"{stack.url}/jobs/{job_id}/pause/",
                    data={"csrfmiddlewaretoken": token},
                    headers={"Referer": stack.url},
                )
    paused = s.get(f"{stack.url}/api/v1/jobs/{job_id}/").json()
    assert paused["status"] == "paused" and 3 <= paused["step"] < 60

    # The worker is free: another job runs to the end while this one is paused.
    other = upload_and_submit(stack, s, epochs="1")
    with s.get(f"{stack.url}/jobs/{other}/events/", stream=True, timeout=60) as r:
        statuses = [
            d["status"]
            for e, d in read_sse(r, lambda e, d: e == "status" and d["status"] == "succeeded")
            if e == "status"
        ]
    assert statuses[-1] == "succeeded"

    s.post(f"{stack.url}/jobs/{job_id}/resume/", data={"csrfmiddlewaretoken": token}, headers={"Referer": stack.url})
    with s.get(f"{stack.url}/jobs/{job_id}/events/", stream=True, timeout=60) as r:
        seen = list(read_sse(r, lambda e, d: e == "status" and d["status"] == "succeeded"))
    steps = [d["step"] for e, d in seen if e == "metric"]
    assert steps == list(range(1, 61)), "every step exactly once across pause and resume"
    job = s.get(f"{stack.url}/api/v1/jobs/{job_id}/").json()
    assert job["status"] == "succeeded" and job["attempts"] == 1  # a pause is not a crash
