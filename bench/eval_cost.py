"""The end-of-job evaluation's cost: the old evaluation against the current one, after the same short job.

    .venv/bin/python bench/eval_cost.py [--epochs 3] [--threads 2] [--batch-sizes 8,20] [--old-rev REV]
                                        [--rounds 1] [--keep DIR | --reuse DIR]
                                        [--model var/models/SmolLM2-135M-Instruct]

Trains the demo job once (`worker.engine.train`, the demo model, `worker/demo_data/demo_dataset.jsonl`,
3 epochs, TrainConfig defaults, the 20 examples of `demo_eval.jsonl` as its validation split) with the
end-of-job evaluation off, timing the job from `train` to its return. Then, on the trained model still in
memory, runs the evaluation as it was at `--old-rev` (its `worker/evaluation.py`, read with `git show`)
and as it is now (once per `--batch-sizes` entry, the generation batch), and prints each one's seconds and
its share of a job that would have run it (evaluation / (job + evaluation), the figure the engine logs
as "evaluation took X s, Y% of the job"). Last, whether they report the same: the losses, and each row's
two answers: the same, the old one cut at the new bound (the new one is its start, the old one ran past
`answer_tokens`), or different (each difference is listed); and the rates of both sides. `--rounds`: the
evaluations again, in the other order each round (the machine's load drifts). `--keep DIR` keeps the job's
folder and time; `--reuse DIR` evaluates its adapter again without training (the base loaded as the job
loads it, the adapter from DIR/adapter, its LoRA branches in bf16 over a bf16 base as in the job).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
DATA = ROOT / "worker" / "demo_data" / "demo_dataset.jsonl"
EVAL = ROOT / "worker" / "demo_data" / "demo_eval.jsonl"
OLD_REV = "89030ed2b609c3e98e61c963fcef030282e9e1fc"  # the last commit before the bounded evaluation


def old_module(rev: str, folder: Path) -> ModuleType:
    """`worker/evaluation.py` as it was at `rev`, imported under another name (it imports today's worker.*)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:worker/evaluation.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = folder / "old_evaluation.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_evaluation", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_job(model_dir: str, epochs: float, out: str) -> tuple[Any, float, str]:
    """(trained PEFT model, the job's seconds without its end-of-job evaluation, precision)."""
    from worker.config import TrainConfig, TrainSpec
    from worker.engine import train
    from worker.reporting import MemoryReporter

    cfg = TrainConfig(epochs=epochs, final_eval=False, seed=42)
    spec = TrainSpec(model_dir, str(DATA), out, cfg, eval_dataset_path=str(EVAL), device="cpu")
    started = time.perf_counter()
    result = train(spec, MemoryReporter())
    return result.model, time.perf_counter() - started, result.precision


def reload_job(model_dir: str, folder: Path) -> tuple[Any, float, str]:
    """The kept job's adapter over its base, as the engine holds them at its end, and the job's seconds."""
    from peft import PeftModel

    from worker.config import TrainConfig
    from worker.lora16 import compute_lora_in_bf16
    from worker.modeling import load_base_model, train_device

    cfg = TrainConfig()
    device = train_device("cpu", cfg)
    model = PeftModel.from_pretrained(load_base_model(model_dir, device, cfg), str(folder / "adapter"))
    compute_lora_in_bf16(model)
    seconds, precision = (folder / "job_seconds.txt").read_text().split()
    return model, float(seconds), precision


def timed(evaluate, *args, generation_batch_size: str | None = None, **kwargs) -> tuple[dict, float]:
    """One evaluation and its seconds; a generation batch size "8u" batches the prompts in their own order
    (not by length), to tell the length sorting's effect apart."""
    import worker.evaluation

    sorted_batches = worker.evaluation.length_sorted_batches
    if generation_batch_size is not None:
        kwargs["generation_batch_size"] = int(generation_batch_size.rstrip("u"))
        if generation_batch_size.endswith("u"):
            worker.evaluation.length_sorted_batches = lambda tok, convs, size: [
                list(range(i, min(i + size, len(convs)))) for i in range(0, len(convs), size)
            ]
    try:
        started = time.perf_counter()
        out = evaluate(*args, **kwargs)
        return out, time.perf_counter() - started
    finally:
        worker.evaluation.length_sorted_batches = sorted_batches


def loss_seconds(model: Any, tokenizer: Any, examples: list) -> float:
    """Seconds of the evaluation's part that did not change: the validation loss with and without the adapter."""
    from worker.data.tokenization import tokenize_examples
    from worker.loss import mean_token_loss

    started = time.perf_counter()
    model.eval()
    tokenized = tokenize_examples(tokenizer, examples, 256)
    mean_token_loss(model, tokenized, 8, tokenizer.pad_token_id, "cpu")
    with model.disable_adapter():
        mean_token_loss(model, tokenized, 8, tokenizer.pad_token_id, "cpu")
    return time.perf_counter() - started


def compare(old: dict, new: dict, tokenizer: Any) -> str:
    """How the new evaluation's report differs from the old one's, in words."""

    def answer_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    same = cut = differ = 0
    for o, n in zip(old["rows"], new["rows"], strict=True):
        for side in ("adapter", "base"):
            if o[side] == n[side]:
                same += 1
            elif o[side].startswith(n[side]) and answer_tokens(n[side]) >= new["answer_tokens"] - 2:
                cut += 1  # (re-tokenized text may count a token or two apart from the generated ids)
            else:
                differ += 1
                print(f"    {side} of {o['prompt'][:40]!r}: old {o[side][:70]!r} new {n[side][:70]!r}")
    losses = all(old["loss"][k] == new["loss"][k] for k in ("adapter", "base"))
    return (
        f"losses {'identical' if losses else 'DIFFER'} (adapter {new['loss']['adapter']:.4f}, base "
        f"{new['loss']['base']:.4f}); answers: {same} the same, {cut} the old one cut at {new['answer_tokens']} "
        f"tokens, {differ} different; rates old {old['rates']} new {new['rates']}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-sizes", default="8", help="generation batch sizes of the new evaluation, comma-separated")
    p.add_argument("--old-rev", default=OLD_REV)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--keep", help="keep the job's folder (its adapter) and time here")
    p.add_argument("--reuse", help="evaluate the job kept in this folder again, without training")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from bench.train_throughput import ensure_model
    from worker.data.normalized import read_normalized_jsonl
    from worker.evaluation import evaluate_adapter
    from worker.modeling import load_tokenizer, quiet_transformers

    quiet_transformers()
    model_dir = str(ensure_model(Path(a.model)))
    tokenizer = load_tokenizer(model_dir)
    examples = read_normalized_jsonl(EVAL)
    with tempfile.TemporaryDirectory() as tmp:
        old_evaluation = old_module(a.old_rev, Path(tmp))
        if a.reuse:
            model, job_s, precision = reload_job(model_dir, Path(a.reuse))
        else:
            folder = Path(a.keep) if a.keep else Path(tmp) / "job"
            model, job_s, precision = train_job(model_dir, a.epochs, str(folder))
            (folder / "job_seconds.txt").write_text(f"{job_s} {precision}")
        print(
            f"job: {Path(model_dir).name}, {DATA.name}, {a.epochs:g} epochs, precision {precision}, torch threads "
            f"{torch.get_num_threads()}: {job_s:.1f} s without its end-of-job evaluation{' (kept)' if a.reuse else ''}",
            flush=True,
        )
        common = {"max_seq_length": 256, "device": "cpu"}
        losses_s = loss_seconds(model, tokenizer, examples)
        print(f"of any evaluation, the two validation losses (adapter, base): {losses_s:.1f} s", flush=True)
        runs: list[tuple[str, Any, dict]] = [("old", old_evaluation.evaluate_adapter, {})]
        runs += [(f"new-{s}", evaluate_adapter, {"generation_batch_size": s}) for s in a.batch_sizes.split(",")]
        seconds: dict[str, list[float]] = {name: [] for name, _, _ in runs}
        reports: dict[str, dict] = {}
        for round_no in range(a.rounds):
            for name, evaluate, extra in runs if round_no % 2 == 0 else runs[::-1]:
                reports[name], took = timed(evaluate, model, tokenizer, examples, **common, **extra)
                seconds[name].append(took)
                print(f"round {round_no + 1} {name}: {took:.1f} s", flush=True)
        old_s = statistics.median(seconds["old"])
        print(
            f"old evaluation ({a.old_rev[:7]}): {old_s:.1f} s (median), {100 * old_s / (job_s + old_s):.0f}% of the job"
        )
        for name, _, extra in runs[1:]:
            new, new_s = reports[name], statistics.median(seconds[name])
            print(
                f"new evaluation (generation batch {extra['generation_batch_size']}, answers <= "
                f"{new['answer_tokens']} tokens): {new_s:.1f} s (median), {100 * new_s / (job_s + new_s):.0f}% of the "
                f"job; {old_s / new_s:.1f}x faster",
                flush=True,
            )
            print("  " + compare(reports["old"], new, tokenizer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
