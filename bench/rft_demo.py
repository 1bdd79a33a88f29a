"""The demo task, supervised then reinforcement: does RFT on top of an SFT adapter raise the validation reward?

    .venv/bin/python bench/rft_demo.py [--sft-steps 20] [--rft-steps 12] [--threads 2] [--model DIR]

1. Supervised: `worker.engine.train` on the demo dataset (`worker/demo_data/demo_dataset.jsonl`: a message in,
   {"name", "city", "date"} JSON out) for `--sft-steps` steps (TrainConfig defaults otherwise).
2. Reinforcement on top of that adapter (`start_from`), on the same messages as prompts with the expected fields
   as the item, graded by a multi grader: the answer is JSON (`{{sample.output_json.name}}` resolves) and each
   field equals the expected one, `(name + city + date) / 3`.
3. The end-of-job evaluation of step 2 answers the 20 held-out prompts (`demo_eval.jsonl`) greedily with the start
   (the SFT adapter) and the result, and grades both: the two mean rewards are the figure, with the step-by-step
   train reward and KL.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
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


def prompts_file(source: Path, target: Path) -> Path:
    """The demo chats as prompts to reward: the user's message, and the expected fields as the item."""
    rows = []
    for line in source.read_text().splitlines():
        messages = json.loads(line)["messages"]
        expected = json.loads(messages[-1]["content"])
        rows.append({"messages": messages[:-1], "item": {k: expected[k] for k in FIELDS}})
    target.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--rft-steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    a = parser.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from worker.config import TrainConfig, TrainSpec
    from worker.demo_model import convert_gguf_to_hf, find_demo_gguf, is_complete_model_dir
    from worker.engine import train
    from worker.modeling import quiet_transformers
    from worker.reporting import MemoryReporter

    quiet_transformers()
    model = Path(a.model)
    if not is_complete_model_dir(model):
        convert_gguf_to_hf(find_demo_gguf(), model)
    work = Path(tempfile.mkdtemp(prefix="rft-demo-"))
    began = time.monotonic()
    sft = TrainSpec(
        str(model),
        str(DEMO / "demo_dataset.jsonl"),
        str(work / "sft"),
        TrainConfig(max_steps=a.sft_steps, learning_rate=1e-3, warmup_ratio=0.0, final_eval=False, seed=42),
        device="cpu",
    )
    result = train(sft, MemoryReporter())
    sft_s = time.monotonic() - began
    print(f"supervised: {result.status}, {a.sft_steps} steps in {sft_s:.0f} s", flush=True)
    rft_config = TrainConfig(
        method="reinforcement",
        start_from="0" * 32,  # the engine reads the adapter from start_adapter_dir
        max_steps=a.rft_steps,
        batch_size=4,
        group_size=4,
        max_answer_tokens=48,
        learning_rate=2e-4,
        beta=0.04,
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
        start_adapter_dir=str(work / "sft" / "adapter"),
        grader=GRADER,
    )
    reporter = MemoryReporter()
    began = time.monotonic()
    result = train(spec, reporter)
    rft_s = time.monotonic() - began
    evaluation = json.loads((work / "rft" / "evaluation.json").read_text())
    print(f"reinforcement: {result.status}, {a.rft_steps} steps in {rft_s:.0f} s")
    print(f"{'step':>5}{'reward':>8}{'spread':>8}{'kl':>9}{'tokens':>8}{'sample s':>10}{'update s':>10}")
    for step, m in reporter.points:
        print(
            f"{step:>5}{m['reward']:>8.3f}{m['reward_spread']:>8.3f}{m['kl']:>9.4f}{m['answer_tokens']:>8.1f}"
            f"{m['sample_s']:>10.1f}{m['update_s']:>10.1f}"
        )
    reward = evaluation["reward"]
    print(
        f"held-out mean reward ({evaluation['prompts']} prompts): SFT start {reward['base']:.3f} -> RFT "
        f"{reward['adapter']:.3f} ({reward['adapter'] - reward['base']:+.3f})"
    )


if __name__ == "__main__":
    main()
