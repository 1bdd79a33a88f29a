"""Reinforcement fine-tuning speed: `worker.engine.train` (method reinforcement) against TRL's `GRPOTrainer` + PEFT.

    .venv/bin/python bench/rft_speed.py [--steps 6] [--threads 2] [--model DIR | --tiny] [--group 4] [--prompts 4]
                                        [--answer-tokens 32]

Both variants train the same model (the demo model SmolLM2-135M-Instruct, converted from the bundled GGUF when
missing, or with --tiny a tiny random Llama built here) for the same number of optimizer steps on the same prompts
(the demo dataset's user turns), with the same LoRA config (TrainConfig defaults: rank 16, alpha 32, dropout 0.05,
attention layers), the same group (G answers per prompt, `--prompts` prompts per step), the same answer length
(`--answer-tokens`, no early stop at end-of-sequence where the model would stop: both stop at it), temperature 1.0,
learning rate 1e-5, beta 0 (TRL's default: no reference pass), the "dapo" loss, fp32 on a CPU, and the same reward:
the share of digits in the answer. TRL calls the reward as a Python function in its own process; the engine runs it
as the product does, a python grader in its sandboxed child process (the difference is in `grade s`).

Each variant runs in its own child process (this script re-invoked with `--variant`). Measured from the end of
step 1 to the end of the last step (step 1, warm-up, left out): seconds per step and sampled answer tokens per
second (answer tokens up to and including the end-of-sequence token, what both sides sample). The engine also
says where its time goes (sampling, grading, the update), from its own step metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
DATA = ROOT / "worker" / "demo_data" / "demo_dataset.jsonl"
DIGITS_SOURCE = (
    "def grade(sample, item):\n"
    "    text = sample['output_text']\n"
    "    return sum(c.isdigit() for c in text) / max(1, len(text))\n"
)


def digits_share(text: str) -> float:
    return sum(c.isdigit() for c in text) / max(1, len(text))


def prompts(count: int) -> list[list[dict[str, str]]]:
    """The demo dataset's conversations up to their first assistant turn."""
    rows = []
    for line in DATA.read_text().splitlines():
        messages = json.loads(line)["messages"]
        upto = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        rows.append(messages[:upto])
        if len(rows) == count:
            break
    return rows


def run_engine(model_dir: str, a) -> dict:
    from worker.config import TrainConfig, TrainSpec
    from worker.engine import train
    from worker.reporting import MemoryReporter

    class TimedReporter(MemoryReporter):
        def __init__(self) -> None:
            super().__init__()
            self.times: dict[int, float] = {}

        def log(self, step, metrics):
            self.times[step] = time.perf_counter()
            super().log(step, metrics)

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "prompts.jsonl"
        rows = prompts(a.prompts * (a.steps + 1))
        data.write_text("".join(json.dumps({"messages": m, "item": {}}) + "\n" for m in rows))
        cfg = TrainConfig(
            method="reinforcement",
            max_steps=a.steps,
            batch_size=a.prompts,
            group_size=a.group,
            max_answer_tokens=a.answer_tokens,
            sample_temperature=1.0,
            learning_rate=1e-5,
            beta=0.0,
            warmup_ratio=0.0,
            save_every=10_000_000,
            precision="fp32",
            keep_best=False,
            final_eval=False,
            seed=42,
        )
        grader = {"type": "python", "name": "digits", "source": DIGITS_SOURCE}
        spec = TrainSpec(model_dir, str(data), str(Path(folder) / "out"), cfg, device="cpu", grader=grader)
        reporter = TimedReporter()
        train(spec, reporter)
    points = dict(reporter.points)
    later = range(2, a.steps + 1)
    answers = a.prompts * a.group
    tokens = sum(points[s]["answer_tokens"] * answers for s in later)
    seconds = reporter.times[a.steps] - reporter.times[1]
    return {
        "seconds": seconds,
        "answer_tokens": tokens,
        "sample_s": sum(points[s]["sample_s"] for s in later),
        "grade_s": sum(points[s]["grade_s"] for s in later),
        "update_s": sum(points[s]["update_s"] for s in later),
        "mean_reward": sum(points[s]["reward"] for s in later) / len(later),
    }


def run_trl(model_dir: str, a) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from worker.config import TrainConfig

    defaults = TrainConfig()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    rows = prompts(a.prompts * (a.steps + 1))
    dataset = Dataset.from_list([{"prompt": m} for m in rows])
    seen: dict[str, float] = {"tokens": 0.0}
    times: dict[int, float] = {}

    def reward(prompts, completions, completion_ids=None, **kwargs):
        return [digits_share(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times[state.global_step] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs and state.global_step >= 2:
                seen["tokens"] += logs["completions/mean_length"] * a.prompts * a.group

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=a.steps,
        per_device_train_batch_size=a.prompts * a.group,
        num_generations=a.group,
        steps_per_generation=1,
        gradient_accumulation_steps=1,
        max_completion_length=a.answer_tokens,
        temperature=1.0,
        learning_rate=1e-5,
        lr_scheduler_type="linear",
        warmup_steps=0,
        beta=0.0,
        loss_type="dapo",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=42,
        max_grad_norm=defaults.max_grad_norm,
    )
    lora = LoraConfig(
        r=defaults.rank,
        lora_alpha=defaults.alpha,
        lora_dropout=defaults.dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Timer()],
    )
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h][1:]
    return {
        "seconds": times[a.steps] - times[1],
        "answer_tokens": seen["tokens"],
        "mean_reward": sum(rewards) / max(1, len(rewards)),
    }


def child(a) -> None:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from worker.modeling import quiet_transformers

    quiet_transformers()
    result = run_trl(a.model, a) if a.variant == "trl" else run_engine(a.model, a)
    result.update(variant=a.variant, threads=torch.get_num_threads())
    print("RESULT " + json.dumps(result), flush=True)


def model_folder(a) -> Path:
    if a.tiny:
        from tests.tiny_model import build_tiny_model

        folder = Path(tempfile.mkdtemp()) / "tiny"
        return build_tiny_model(folder)
    from worker.demo_model import convert_gguf_to_hf, find_demo_gguf, is_complete_model_dir

    folder = Path(a.model) if a.model else DEFAULT_MODEL
    if not is_complete_model_dir(folder):
        print(f"converting the demo GGUF into {folder} ...", flush=True)
        convert_gguf_to_hf(find_demo_gguf(), folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of the demo model")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--variant", choices=["engine", "trl"])
    a = parser.parse_args()
    if a.variant:
        child(a)
        return
    model = model_folder(a)
    results = {}
    for variant in ("trl", "engine"):
        cmd = [sys.executable, __file__, "--variant", variant, "--model", str(model)]
        cmd += ["--steps", str(a.steps), "--threads", str(a.threads), "--group", str(a.group)]
        cmd += ["--prompts", str(a.prompts), "--answer-tokens", str(a.answer_tokens)]
        load = os.getloadavg()[0]
        done = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        line = next((row for row in done.stdout.splitlines() if row.startswith("RESULT ")), None)
        if done.returncode or line is None:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            sys.exit(f"{variant} failed")
        results[variant] = {**json.loads(line[7:]), "load": (load, os.getloadavg()[0])}
    print(
        f"\nmodel {model.name}, {a.steps} steps ({a.steps - 1} timed), {a.prompts} prompts x {a.group} answers per step, "
        f"answers up to {a.answer_tokens} tokens, torch threads {a.threads}"
    )
    print(
        f"{'variant':<8}{'s/step':>9}{'answer tok/s':>14}{'sample s':>10}{'grade s':>9}{'update s':>10}{'reward':>8}  load"
    )
    for name, r in results.items():
        steps = a.steps - 1
        print(
            f"{name:<8}{r['seconds'] / steps:>9.2f}{r['answer_tokens'] / r['seconds']:>14.1f}"
            f"{r.get('sample_s', float('nan')):>10.1f}{r.get('grade_s', float('nan')):>9.2f}"
            f"{r.get('update_s', float('nan')):>10.1f}{r['mean_reward']:>8.3f}  {r['load'][0]:.2f}/{r['load'][1]:.2f}"
        )
    engine, trl = results["engine"], results["trl"]
    print(
        f"engine / TRL: {trl['seconds'] / engine['seconds']:.2f}x steps per second, "
        f"{(engine['answer_tokens'] / engine['seconds']) / (trl['answer_tokens'] / trl['seconds']):.2f}x answer tokens/s"
    )


if __name__ == "__main__":
    main()
