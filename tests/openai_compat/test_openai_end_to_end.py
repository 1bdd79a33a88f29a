"""The official `openai` client against a live stack: upload, fine-tune, list events and models, chat."""

import io
import json

import pytest

from tests.conftest import memorisable_conversations
from tests.integration.stack import running_stack
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_llama):
    with running_stack(tmp_path_factory.mktemp("stack-openai"), tiny_llama) as s:
        yield s


def wait_succeeded(client, job, stack, limit_s: float = 300):
    """Poll the job through the client until it ends; it must have succeeded."""
    job = wait_until(
        lambda: client.fine_tuning.jobs.retrieve(job.id),
        until=lambda j: j.status in ("succeeded", "failed", "cancelled"),
        timeout=limit_s,
        interval=1,
        what=f"fine-tuning job {job.id} to end",
        on_timeout=stack.logs,
    )
    assert job.status == "succeeded", (job.error, stack.logs())
    return job


def test_openai_client_fine_tunes_and_chats(stack):
    from openai import OpenAI

    key = stack.manage("create_api_key", "alice").strip().splitlines()[-1]
    client = OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0, timeout=120)

    data = "".join(json.dumps({"messages": m}) + "\n" for m in memorisable_conversations()).encode()
    f = client.files.create(file=("colours.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert f.id.startswith("file-") and f.bytes == len(data) and f.status == "processed"

    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=f.id,
        suffix="colours",
        seed=3,
        hyperparameters={"n_epochs": 12, "batch_size": 4, "learning_rate_multiplier": 10},
        extra_body={"lora": {"rank": 8, "alpha": 16, "dropout": 0, "target_preset": "all_linear"}},
    )
    assert job.status == "queued" and job.fine_tuned_model is None

    job = wait_succeeded(client, job, stack)
    assert job.fine_tuned_model.startswith("ft:tiny-llama:colours:") and job.finished_at >= job.created_at

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(24, 0, -1))  # newest first
    assert metrics[0].data["total_steps"] == 24 and metrics[0].data["train_loss"] < metrics[-1].data["train_loss"]

    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    assert "tiny-llama" in [m.id for m in client.models.list()]

    messages = [{"role": "user", "content": "colour 2"}]
    whole = client.chat.completions.create(model=job.fine_tuned_model, messages=messages, temperature=0, max_tokens=16)
    text = whole.choices[0].message.content
    assert '"blue"' in text, (text, stack.logs())
    assert whole.usage.completion_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model=job.fine_tuned_model, messages=messages, temperature=0, max_tokens=16, stream=True
        )
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) >= 2  # it really streamed, piece by piece
    assert "".join(pieces) == text

    base = client.chat.completions.create(model="tiny-llama", messages=messages, temperature=0, max_tokens=16)
    assert base.choices[0].message.content != text


def test_openai_client_drives_a_dpo_job(stack):
    """OpenAI's DPO shape end to end: a preference file in OpenAI's format, `method: dpo` with beta, the
    reward metrics in the job's events, and the adapted model answering."""
    from openai import OpenAI

    key = stack.manage("create_api_key", "alice").strip().splitlines()[-1]
    client = OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0, timeout=120)
    colours = ["red", "green", "blue", "amber"]
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"colour {i}"}]},
            "preferred_output": [{"role": "assistant", "content": json.dumps({"answer": colours[i % 4]})}],
            "non_preferred_output": [{"role": "assistant", "content": f"I think it is colour number {i}."}],
        }
        for i in range(8)
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    f = client.files.create(file=("pairs.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert f.status == "processed"

    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=f.id,
        suffix="prefs",
        seed=3,
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.5, "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10}},
        },
        extra_body={"lora": {"rank": 8, "alpha": 16, "dropout": 0, "target_preset": "all_linear"}},
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.5
    job = wait_succeeded(client, job, stack)
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert [m["step"] for m in metrics] == [4, 3, 2, 1]
    assert metrics[-1]["train_loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: the adapter starts as the base
    assert metrics[0]["train_loss"] < 0.5, metrics  # the chosen answers pulled ahead of the rejected ones
    answer = client.chat.completions.create(
        model=job.fine_tuned_model, temperature=0, max_tokens=8, messages=[{"role": "user", "content": "colour 1"}]
    )
    assert answer.choices[0].message.content


def test_openai_client_drives_a_reinforcement_job(stack):
    """OpenAI's reinforcement shape end to end on a live stack: a prompts file, the grader checked and tried with
    `client.fine_tuning.alpha.graders`, `method: reinforcement` trained by the real worker with the python grader
    in its sandbox, the rewards in the events, the checkpoints, and the result answering."""
    from openai import OpenAI

    key = stack.manage("create_api_key", "alice").strip().splitlines()[-1]
    client = OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0, timeout=120)
    questions = ["what is the answer", "please reply", "hello world", "red green blue"]
    rows = [{"messages": [{"role": "user", "content": questions[i % 4]}], "n": i} for i in range(12)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    f = client.files.create(file=("prompts.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert f.status == "processed"
    grader = {
        "type": "python",
        "name": "digits",
        "source": "def grade(sample, item):\n    text = sample['output_text']\n"
        "    return sum(c.isdigit() for c in text) / max(1, len(text))\n",
    }
    assert client.fine_tuning.alpha.graders.validate(grader=grader).grader is not None
    assert client.fine_tuning.alpha.graders.run(grader=grader, model_sample="a1b2", item={}).reward == 0.5

    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=f.id,
        suffix="digits",
        seed=3,
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": grader,
                "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 100, "beta": 0},
            },
        },
        extra_body={
            "lora": {
                "rank": 8,
                "alpha": 16,
                "dropout": 0,
                "target_preset": "all_linear",
                "max_answer_tokens": 6,
                "group_size": 4,
            }
        },  # fmt: skip
    )
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.name == "digits"
    job = wait_succeeded(client, job, stack)
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert [m["step"] for m in metrics] == [6, 5, 4, 3, 2, 1]
    assert all(0 <= m["train_reward_mean"] <= 1 for m in metrics)
    assert client.fine_tuning.jobs.checkpoints.list(job.id).has_more is False
    answer = client.chat.completions.create(
        model=job.fine_tuned_model, temperature=0, max_tokens=6, messages=[{"role": "user", "content": "hello world"}]
    )
    assert answer.choices[0].message.content is not None
