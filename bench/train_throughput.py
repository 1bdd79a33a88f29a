"""Training throughput: `worker.engine.train` against a plain HF `Trainer` + PEFT baseline.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--threads 2] [--rounds 3] [--model DIR]
                                               [--data demo|short|both] [--variants baseline-bf16,engine]

Every variant trains the demo model (SmolLM2-135M-Instruct, converted from the bundled GGUF if the
folder is missing) for the same number of optimizer steps with the same LoRA config (TrainConfig
defaults: rank 16, alpha 32, dropout 0.05, attention layers), batch size, max length, learning rate
(linear schedule, no warmup) and tokenization (`worker.data.tokenization.tokenize_examples`: chat
template, assistant-only labels), on two datasets: `worker/demo_data/demo_dataset.jsonl` (demo) and
400 generated short examples of about 55 tokens with one-line answers (short, `bench/short_data.py`).

* baseline: `transformers.Trainer` on the PEFT model in fp32 (its default), `DataCollatorForSeq2Seq`
  padding each batch to its longest example, the default random sampler, the model's own loss
  (full-vocabulary logits).
* baseline-bf16: the same Trainer script with the base loaded in bf16 (`from_pretrained(..., dtype=torch.bfloat16)`,
  HF's own loader), the LoRA weights left in fp32 by PEFT (`autocast_adapter_dtype`, its default) and the
  Trainer's `bf16=False` (the weights already are bf16; `bf16=True` would only add autocast's casts around
  the fp32 LoRA branches): what a careful engineer writes first on a CPU with native bf16 (issue 28's peer).
* engine: `worker.engine.train` with its defaults (precision auto: a bf16 frozen base on a CPU with
  native bf16, LoRA weights and AdamW in fp32; length-grouped batches, logits only at labelled positions).
* engine-fp32: the same with precision fp32, so the engine's own lever and the precision lever show apart.
* engine-peft-lora: the engine's defaults with PEFT's own (fp32) LoRA branches over the bf16 base, i.e.
  worker/lora16.py off, so that lever shows apart too.

Each variant runs in its own child process (this script re-invoked with `--variant`), so its peak
RSS is its own: `resource.getrusage(RUSAGE_SELF).ru_maxrss` read in the child at the end (the
process's high-water mark, model load included) and the same figure read after the imports, whose
difference is the growth caused by the variant (model, optimizer, activations). Throughput counts
non-padding tokens (what the engine's `tokens_per_s` metric counts) from the end of step 1 to the
end of the last step, so the first, warm-up step is left out of both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
DATA = ROOT / "worker" / "demo_data" / "demo_dataset.jsonl"
VARIANTS = ("baseline", "baseline-bf16", "engine", "engine-fp32", "engine-peft-lora")
TARGETS = {  # engine / peer: (least tokens/s ratio, most peak RSS ratio)
    "baseline": (2.0, 0.7),
    "baseline-bf16": (1.5, 0.8),  # issue 28
}


def maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_config(steps: int, precision: str = "auto"):
    from worker.config import TrainConfig

    return TrainConfig(
        max_steps=steps, warmup_ratio=0.0, lr_scheduler="linear", save_every=10_000_000, seed=42, precision=precision
    )


def run_engine(model_dir: str, steps: int, data: Path, precision: str) -> dict:
    from worker.batching import MicroBatchStream
    from worker.config import TrainSpec
    from worker.data.normalized import read_normalized_jsonl
    from worker.data.tokenization import tokenize_examples
    from worker.engine import train
    from worker.modeling import load_tokenizer
    from worker.reporting import MemoryReporter
    from worker.schedule import plan_steps

    cfg = bench_config(steps, precision)

    class TimedReporter(MemoryReporter):
        def __init__(self):
            super().__init__()
            self.times: dict[int, float] = {}

        def log(self, step, metrics):
            self.times[step] = time.perf_counter()
            super().log(step, metrics)

    reporter = TimedReporter()
    with tempfile.TemporaryDirectory() as out:
        result = train(TrainSpec(model_dir, str(data), out, cfg, device="cpu"), reporter)
    # The engine's batches are a pure function of (seed, epoch): recount their real tokens.
    examples = tokenize_examples(load_tokenizer(model_dir), read_normalized_jsonl(data), cfg.max_seq_length)
    per_epoch, total = plan_steps(len(examples), cfg)
    stream = MicroBatchStream(examples, cfg, per_epoch)
    tokens = {s: sum(len(examples[i].input_ids) for b in stream.for_step(s)[1] for i in b) for s in range(1, total + 1)}
    return {
        "tokens": sum(tokens[s] for s in range(2, steps + 1)),
        "seconds": reporter.times[steps] - reporter.times[1],
        "mean_loss": sum(reporter.losses().values()) / steps,
        "trainable": result.trainable_params,
        "precision": result.precision,
    }


def run_baseline(model_dir: str, steps: int, data: Path, precision: str = "fp32") -> dict:
    import torch
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from worker.data.normalized import read_normalized_jsonl
    from worker.data.tokenization import IGNORE_INDEX, tokenize_examples
    from worker.modeling import build_peft_model, choose_device, load_base_model, load_tokenizer

    cfg = bench_config(steps, "fp32")
    tok = load_tokenizer(model_dir)
    examples = tokenize_examples(tok, read_normalized_jsonl(data), cfg.max_seq_length)
    rows = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)} for e in examples]
    if precision == "bf16":  # HF's loader, not worker.modeling's (its pread loading is one of the engine's levers)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, low_cpu_mem_usage=True)
    else:
        base = load_base_model(model_dir, choose_device("cpu", "fp32"), cfg)
    model, _ = build_peft_model(base, cfg)  # PEFT's get_peft_model: LoRA weights in fp32 over either base
    trainable = model.get_nb_trainable_parameters()[0]

    counted: list[int] = []
    inner = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=IGNORE_INDEX)

    def collator(features):
        batch = inner(features)
        counted.append(int(batch["attention_mask"].sum()))
        return batch

    class Clock(TrainerCallback):
        times: list[float] = []
        loss: float | None = None  # with logging_steps == max_steps: the mean loss over the run

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.loss = logs["loss"]

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.learning_rate,
            max_steps=steps,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            optim="adamw_torch",
            use_cpu=True,
            bf16=False,
            fp16=False,
            seed=cfg.seed,
            report_to="none",
            save_strategy="no",
            logging_strategy="steps",
            logging_steps=steps,
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
        )
        Trainer(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[clock]).train()
    assert len(clock.times) == steps and len(counted) >= steps, (len(clock.times), len(counted))
    return {
        "tokens": sum(counted[1:steps]),
        "seconds": clock.times[-1] - clock.times[0],
        "mean_loss": clock.loss,
        "trainable": trainable,
        "precision": precision,
    }


def child(variant: str, model_dir: str, steps: int, threads: int | None, data: Path) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    import peft  # noqa: F401  (imports counted before the "after imports" figure)
    import transformers  # noqa: F401

    from worker.modeling import quiet_transformers

    quiet_transformers()
    rss_imports = maxrss_mb()
    if variant in ("baseline", "baseline-bf16"):
        result = run_baseline(model_dir, steps, data, "bf16" if variant == "baseline-bf16" else "fp32")
    elif variant == "engine-peft-lora":  # the bf16 base with PEFT's own fp32 LoRA branches (worker/lora16.py off)
        import worker.lora16

        worker.lora16.compute_lora_in_bf16 = lambda model: 0
        result = run_engine(model_dir, steps, data, "auto")
    else:
        result = run_engine(model_dir, steps, data, "fp32" if variant == "engine-fp32" else "auto")
    result.update(
        variant=variant,
        rss_after_imports_mb=rss_imports,
        peak_rss_mb=maxrss_mb(),
        threads=torch.get_num_threads(),
        tokens_per_s=result["tokens"] / result["seconds"],
    )
    print("RESULT " + json.dumps(result), flush=True)


def ensure_model(model_dir: Path) -> Path:
    from worker.demo_model import convert_gguf_to_hf, find_demo_gguf, is_complete_model_dir

    if not is_complete_model_dir(model_dir):
        print(f"converting the demo GGUF into {model_dir} ...", flush=True)
        convert_gguf_to_hf(find_demo_gguf(), model_dir)
    return model_dir


def run_variant(variant: str, model_dir: Path, data: Path, a, env: dict) -> dict | None:
    cmd = [
        sys.executable,
        __file__,
        "--variant",
        variant,
        "--model",
        str(model_dir),
        "--steps",
        str(a.steps),
        "--data-file",
        str(data),
    ]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    line = next((row for row in done.stdout.splitlines() if row.startswith("RESULT ")), None)
    if done.returncode or line is None:
        print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
        return None
    result = json.loads(line[7:])
    result["wall_s"] = time.monotonic() - started
    result["load"] = (load_before, os.getloadavg()[0])
    return result


def report(name: str, data: Path, rounds: list[dict], a, model_dir: Path) -> None:
    """The table of one dataset's runs and each engine variant's median ratios to the baseline."""
    threads = next(iter(rounds[0].values()))["threads"]
    print(
        f"\n== {name}: model {model_dir.name}, data {data.name}, {a.steps} steps, torch threads {threads}, "
        f"{a.rounds} round(s), batch/max_len/lr from TrainConfig defaults"
    )
    print(
        f"{'round':<6}{'variant':<18}{'precision':>10}{'tokens/s':>10}{'tokens':>9}{'seconds':>9}{'peak RSS MB':>13}"
        f"{'growth MB':>11}{'mean loss':>11}{'wall s':>8}  1-min load before/after"
    )
    for n, results in enumerate(rounds, 1):
        for v, r in results.items():
            growth = r["peak_rss_mb"] - r["rss_after_imports_mb"]
            print(
                f"{n:<6}{v:<18}{r['precision']:>10}{r['tokens_per_s']:>10.1f}{r['tokens']:>9}{r['seconds']:>9.1f}"
                f"{r['peak_rss_mb']:>13.0f}{growth:>11.0f}{r['mean_loss']:>11.4f}{r['wall_s']:>8.0f}  "
                f"{r['load'][0]:.2f}/{r['load'][1]:.2f}"
            )
    present = rounds[0].keys()

    def ratios(top: str, bottom: str) -> tuple[list[float], list[float], list[float]]:
        speed = [r[top]["tokens_per_s"] / r[bottom]["tokens_per_s"] for r in rounds]
        memory = [r[top]["peak_rss_mb"] / r[bottom]["peak_rss_mb"] for r in rounds]
        growth = [
            (r[top]["peak_rss_mb"] - r[top]["rss_after_imports_mb"])
            / (r[bottom]["peak_rss_mb"] - r[bottom]["rss_after_imports_mb"])
            for r in rounds
        ]
        return speed, memory, growth

    for peer in ("baseline", "baseline-bf16"):
        for variant in ("engine", "engine-fp32"):
            if peer not in present or variant not in present:
                continue
            speed, memory, growth = ratios(variant, peer)
            target = ""
            if variant == "engine":
                least, most = TARGETS[peer]
                met = statistics.median(speed) >= least and statistics.median(memory) <= most
                target = f" (target >= {least}x tokens/s, <= {most}x peak RSS: {'met' if met else 'MISSED'})"
            print(
                f"{name} {variant}/{peer}: {statistics.median(speed):.2f}x tokens/s (rounds "
                f"{', '.join(f'{x:.2f}' for x in speed)}), {statistics.median(memory):.2f}x peak RSS "
                f"(growth {statistics.median(growth):.2f}x){target}"
            )
    for other, lever in (("engine-fp32", "the precision lever"), ("engine-peft-lora", "the bf16 LoRA branches")):
        if "engine" not in present or other not in present:
            continue
        speed, memory, _ = ratios("engine", other)
        print(
            f"{name} engine/{other} ({lever} alone): {statistics.median(speed):.2f}x tokens/s "
            f"(rounds {', '.join(f'{x:.2f}' for x in speed)}), {statistics.median(memory):.2f}x peak RSS"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads per variant (default: torch's)")
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument(
        "--rounds", type=int, default=3, help="rounds of the variants, order rotating; the median ratio is reported"
    )
    p.add_argument("--data", choices=["demo", "short", "both"], default="both")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)} (default: all)"
    )
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--data-file", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.steps < 2:
        p.error("--steps must be at least 2 (step 1 is warm-up)")
    variants = tuple(v for v in VARIANTS if v in a.variants.split(","))
    if not variants or set(a.variants.split(",")) - set(VARIANTS):
        p.error(f"--variants: a comma-separated subset of {', '.join(VARIANTS)}")
    sys.path.insert(0, str(ROOT))
    if a.variant:
        child(a.variant, a.model, a.steps, a.threads, Path(a.data_file))
        return 0

    from bench.short_data import write_short_data

    model_dir = ensure_model(Path(a.model))
    if os.getloadavg()[0] > 1.5:
        print(f"warning: 1-min load average is {os.getloadavg()[0]:.2f}; the figures will be noisy", flush=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {"demo": DATA, "short": write_short_data(Path(tmp) / "short.jsonl")}
        for name in ["demo", "short"] if a.data == "both" else [a.data]:
            rounds = []
            for round_no in range(a.rounds):
                # Rotate the order each round, so a drift in the machine's load hits every variant alike.
                shift = round_no % len(variants)
                order = variants[shift:] + variants[:shift]
                results = {}
                for variant in order:
                    result = run_variant(variant, model_dir, datasets[name], a, env)
                    if result is None:
                        return 1
                    results[variant] = result
                rounds.append(results)
            report(name, datasets[name], rounds, a, model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
