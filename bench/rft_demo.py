"""The demo task, supervised then reinforcement: does RFT on top of an SFT adapter raise the validation reward?

    .venv/bin/python bench/rft_demo.py [--sft-steps 20] [--sft-dir DIR] [--start-only] [--rft-steps 12]
        [--grader fields|partial] [--lr 2e-4] [--beta 0.04] [--batch-size 4] [--group-size 4] [--temperature 1.0]
        [--threads 2] [--model DIR]

1. Supervised: `worker.engine.train` on the demo dataset (`worker/demo_data/demo_dataset.jsonl`: a message in,
   {"name", "city", "date"} JSON out) for `--sft-steps` steps (lr 1e-3, TrainConfig defaults otherwise); with
   `--sft-dir` the adapter is kept there, and one already there is reused (the start of several tries).
2. `--start-only`: the start's greedy answers to the 20 held-out prompts (`demo_eval.jsonl`), graded, and their mean
   reward, then stop: a minute's look at whether the start leaves room (not near 1) and spread (not all 0).
3. Otherwise reinforcement on top of that adapter (`start_from`), on the same messages as prompts with the expected
   fields as the item (`--batch-size` prompts x `--group-size` answers a step, up to 48 tokens each). The grader:
   `fields`, a multi grader, each field equal to the expected one via `{{sample.output_json.<field>}}`,
   `(name + city + date) / 3` (an answer that is not JSON scores 0, and is counted as a grader failure); or
   `partial`, a python grader: 0.25 for a JSON object, plus 0.25 for each right field.
4. The end-of-job evaluation of step 3 answers the held-out prompts greedily with the start (the SFT adapter) and the
   result, and grades both: the two mean rewards are the figure; each step's train reward, spread within groups and
   KL print as the run goes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.reporting import MemoryReporter  # noqa: E402

DEFAULT_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
DEMO = ROOT / "worker" / "demo_data"
FIELDS = ("name", "city", "date")
GRADER = {
    "type": "multi",
    "name": "fields",
    "graders": {
        field: {
            "type": "string_check",
            "name": field,
            "input": f"{{{{sample.output_json.{field}}}}}",
            "reference": f"{{{{item.{field}}}}}",
            "operation": "eq",
        }
        for field in FIELDS
    },
    "calculate_output": "(name + city + date) / 3",
}
PARTIAL_SOURCE = """import json


def grade(sample, item):
    try:
        answer = json.loads(sample["output_text"])
    except ValueError:
        return 0.0
    if not isinstance(answer, dict):
        return 0.0
    return 0.25 + 0.25 * sum(answer.get(k) == item[k] for k in ("name", "city", "date"))
"""
GRADERS = {
    "fields": GRADER,
    # Partial credit: a quarter for a JSON object, a quarter for each right field.
    "partial": {"type": "python", "name": "partial", "source": PARTIAL_SOURCE},
}


def prompts_file(source: Path, target: Path) -> Path:
    """The demo chats as prompts to reward: the user's message, and the expected fields as the item."""
    rows = []
    for line in source.read_text().splitlines():
        messages = json.loads(line)["messages"]
        expected = json.loads(messages[-1]["content"])
        rows.append({"messages": messages[:-1], "item": {k: expected[k] for k in FIELDS}})
    target.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return target


class Progress(MemoryReporter):
    """Each reinforcement step's line as it comes (a run on a busy CPU takes a while), and the job's warnings."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        super().log(step, metrics)
        if "reward" in metrics and "kl" in metrics:
            print(step_line(step, metrics), flush=True)

    def event(self, kind: str, message: str) -> None:
        super().event(kind, message)
        if kind == "warning":
            print(f"warning: {message}", flush=True)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--sft-dir", help="keep the supervised adapter here, or reuse the one already there")
    parser.add_argument("--start-only", action="store_true", help="grade the supervised start and stop")
    parser.add_argument("--rft-steps", type=int, default=12)
    parser.add_argument("--grader", choices=sorted(GRADERS), default="fields")
    parser.add_argument("--lr", type=float, default=2e-4, help="the reinforcement learning rate")
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per reinforcement step")
    parser.add_argument("--group-size", type=int, default=4, help="answers per prompt")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    return parser.parse_args()


def supervised(model: Path, steps: int, folder: Path) -> Path:
    """The SFT adapter after `steps` steps on the demo dataset (one already in `folder` is reused)."""
    from worker.config import TrainConfig, TrainSpec
    from worker.engine import train
    from worker.reporting import MemoryReporter

    adapter = folder / "adapter"
    if (adapter / "adapter_config.json").is_file():
        print(f"supervised: reusing {adapter}", flush=True)
        return adapter
    began = time.monotonic()
    sft = TrainSpec(
        str(model),
        str(DEMO / "demo_dataset.jsonl"),
        str(folder),
        TrainConfig(max_steps=steps, learning_rate=1e-3, warmup_ratio=0.0, final_eval=False, seed=42),
        device="cpu",
    )
    result = train(sft, MemoryReporter())
    print(f"supervised: {result.status}, {steps} steps in {time.monotonic() - began:.0f} s", flush=True)
    return adapter


def start_score(model: Path, adapter: Path, grader: str) -> None:
    """The supervised start's held-out answers (greedy, as the end-of-job evaluation answers) and mean reward,
    without a reinforcement job: a cheap look at whether the start leaves room and spread."""
    from types import SimpleNamespace

    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from worker.config import TrainConfig
    from worker.graders.scoring import Scorer
    from worker.graders.spec import parse_grader
    from worker.modeling import choose_device, load_base_model
    from worker.rft import RewardLearner, tokenize_prompts

    began = time.monotonic()
    device = choose_device("cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    network = PeftModel.from_pretrained(load_base_model(str(model), device), str(adapter)).eval()
    rows = [
        json.loads(line)
        for line in prompts_file(DEMO / "demo_eval.jsonl", adapter.parent / "eval.jsonl").read_text().splitlines()
    ]
    prompts = tokenize_prompts(tokenizer, [SimpleNamespace(**r) for r in rows], 1024)
    cfg = TrainConfig(method="reinforcement", max_answer_tokens=48)
    learner = RewardLearner(Scorer(parse_grader(GRADERS[grader])), cfg, tokenizer, torch.device("cpu"))
    try:
        with torch.no_grad():
            graded = learner.answer_and_grade(network, prompts, lambda: None, len(prompts))
    finally:
        learner.close()
    for row in graded:
        print(f"  {row['reward']:.2f}  {row['answer'][:100]!r}")
    mean = sum(r["reward"] for r in graded) / len(graded)
    print(f"held-out mean reward ({len(graded)} prompts): SFT start {mean:.3f} ({time.monotonic() - began:.0f} s)")


def main() -> None:
    a = arguments()
    import torch

    torch.set_num_threads(a.threads)
    from worker.config import TrainConfig, TrainSpec
    from worker.demo_model import convert_gguf_to_hf, find_demo_gguf, is_complete_model_dir
    from worker.engine import train
    from worker.modeling import quiet_transformers

    quiet_transformers()
    model = Path(a.model)
    if not is_complete_model_dir(model):
        convert_gguf_to_hf(find_demo_gguf(), model)
    work = Path(tempfile.mkdtemp(prefix="rft-demo-"))
    adapter = supervised(model, a.sft_steps, Path(a.sft_dir) if a.sft_dir else work / "sft")
    if a.start_only:
        start_score(model, adapter, a.grader)
        return
    steps = a.rft_steps
    rft_config = TrainConfig(
        method="reinforcement",
        start_from="0" * 32,  # the engine reads the adapter from start_adapter_dir
        max_steps=steps,
        batch_size=a.batch_size,
        group_size=a.group_size,
        sample_temperature=a.temperature,
        max_answer_tokens=48,
        learning_rate=a.lr,
        beta=a.beta,
        warmup_ratio=0.0,
        eval_every=10_000,
        keep_best=False,
        seed=42,
    )
    spec = TrainSpec(
        str(model),
        str(prompts_file(DEMO / "demo_dataset.jsonl", work / "prompts.jsonl")),
        str(work / "rft"),
        rft_config,
        eval_dataset_path=str(prompts_file(DEMO / "demo_eval.jsonl", work / "eval.jsonl")),
        device="cpu",
        start_adapter_dir=str(adapter),
        grader=GRADERS[a.grader],
    )
    reporter = Progress()
    print(
        f"{'step':>5}{'reward':>8}{'spread':>8}{'kl':>9}{'tokens':>8}{'sample s':>10}{'update s':>10}  UTC", flush=True
    )
    began = time.monotonic()
    result = train(spec, reporter)
    rft_s = time.monotonic() - began
    evaluation = json.loads((work / "rft" / "evaluation.json").read_text())
    report(evaluation, reporter.points)
    print(f"reinforcement: {result.status}, {steps} steps in {rft_s:.0f} s; files in {work}")


def step_line(step: int, m: dict[str, Any]) -> str:
    return (
        f"{step:>5}{m['reward']:>8.3f}{m['reward_spread']:>8.3f}{m['kl']:>9.4f}{m['answer_tokens']:>8.1f}"
        f"{m['sample_s']:>10.1f}{m['update_s']:>10.1f}  {time.strftime('%H:%M:%S', time.gmtime())}"
    )


def report(evaluation: dict[str, Any], points: list[tuple[int, dict[str, Any]]]) -> None:
    """The result's held-out answers (with the start's reward beside), the train reward's course, and the figure."""
    reward = evaluation["reward"]
    train = [m["reward"] for _, m in points if "reward" in m]
    if len(train) >= 8:
        first, last = train[: len(train) // 4], train[-(len(train) // 4) :]
        print(
            f"train reward, first {len(first)} steps {sum(first) / len(first):.3f}, last {len(last)} {sum(last) / len(last):.3f}"
        )
    for row in evaluation["rows"]:
        print(f"  {row['base']['reward']:.2f} -> {row['adapter']['reward']:.2f}  {row['adapter']['answer'][:100]!r}")
    print(
        f"held-out mean reward ({evaluation['prompts']} prompts): SFT start {reward['base']:.3f} -> RFT "
        f"{reward['adapter']:.3f} ({reward['adapter'] - reward['base']:+.3f})"
    )


if __name__ == "__main__":
    main()
