"""Quality holds at the CPU's automatic precision: the demo model trained on the demo task with precision
`auto` (on a CPU with native bf16: a bf16 frozen base, fp32 LoRA and AdamW) against the same run in fp32,
each then answering the held-out demo prompts greedily. Prints the exact-match count of each and whether
`auto` is within one prompt of fp32 (the peer run in the same invocation).

    python bench/precision_quality.py [--steps 12] [--prompts 10] [--model var/models/SmolLM2-135M-Instruct]

Measured figures are in bench/README.md ("Precision").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
DEMO_DATA = ROOT / "worker" / "demo_data"


def exact_matches(model_dir: str, precision: str, steps: int, n_prompts: int, out: Path) -> tuple[int, str, float]:
    """Train `steps` steps at `precision`, answer the held-out prompts; (exact matches, precision used, seconds)."""
    from worker.config import TrainConfig, TrainSpec
    from worker.data.normalized import read_normalized_jsonl
    from worker.engine import train
    from worker.evaluation import answer_scores, generate_batch, held_out_prompts
    from worker.modeling import load_tokenizer
    from worker.reporting import MemoryReporter

    prompts = held_out_prompts(read_normalized_jsonl(DEMO_DATA / "demo_eval.jsonl"), n_prompts)
    tokenizer = load_tokenizer(model_dir)
    config = TrainConfig(
        max_steps=steps,
        batch_size=8,
        learning_rate=2e-3,
        warmup_ratio=0.0,
        final_eval=False,
        save_every=1000,
        precision=precision,
    )
    started = time.monotonic()
    result = train(
        TrainSpec(model_dir, str(DEMO_DATA / "demo_dataset.jsonl"), str(out), config, device="cpu"), MemoryReporter()
    )
    result.model.eval()
    answers = generate_batch(result.model, tokenizer, [conv for conv, _ in prompts], 40, "cpu")
    exact = sum(answer_scores(ref, answer)["exact"] for (_, ref), answer in zip(prompts, answers))
    return exact, result.precision, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    args = parser.parse_args()
    if not Path(args.model, "config.json").exists():
        print(f"no model at {args.model}: run `make demo-model` first", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("auto", "fp32"):
            exact, used, seconds = exact_matches(args.model, precision, args.steps, args.prompts, Path(tmp, precision))
            figures[precision] = exact
            print(f"{precision:>5} (ran as {used}): {exact}/{args.prompts} exact, {seconds:.0f} s")
    verdict = "holds" if figures["auto"] >= figures["fp32"] - 1 else "DOES NOT hold"
    print(f"auto vs fp32: {figures['auto']} vs {figures['fp32']} of {args.prompts} -> quality {verdict}")
    return 0 if figures["auto"] >= figures["fp32"] - 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
