"""GPU training: the engine against the strongest plain-HF set-ups on one device (issue 28, part 1).

    .venv/bin/python bench/gpu_train.py [--size 0.5b|1.5b] [--seq 2048] [--steps 30] [--timed 20] [--qlora]
                                        [--setups hf-a,hf-b,...] [--longest-context] [--out results.json]
    .venv/bin/python bench/gpu_train.py --dry-run-cpu   # the tiny test model on the CPU: proves the script only

Offline: a Llama-shaped model with random weights (0.5b: hidden 1024, 24 layers, MLP 4096, 16/8 heads,
~0.46B; 1.5b: hidden 1536, 28 layers, MLP 8960, 12/2 heads, ~1.46B; both with an untied 49k vocabulary and
the demo model's tokenizer, as bench/gpu_check.py builds them). Synthetic chat data (random words, seeded):
`--batch` examples per optimizer step whose lengths average seq / batch tokens, so a packed step is one row of
about `--seq` tokens. Every set-up sees the same examples in the same steps (the engine's own batch plan,
handed to the HF Trainer in order with a sequential sampler), the same LoRA (rank 16, alpha 32, all linear
layers, dropout 0), learning rate, linear schedule without warm-up, AdamW and seed.

Set-ups (each in its own child process, bench/gpu_train_child.py, so its peak memory is its own: torch.cuda.max_memory_allocated on a
GPU, VmHWM on the CPU):
* hf-a: HF `Trainer` + PEFT, bf16, SDPA attention, padding to the longest in the batch, gradient
  checkpointing (non-reentrant; QLoRA: `prepare_model_for_kbit_training`, as the PEFT docs do).
* hf-b: hf-a plus Liger kernels (`use_liger_kernel`) and padding-free packing (`DataCollatorWithFlattening`),
  with FlashAttention-2 where flash_attn is installed (else SDPA, which reads the packed boundaries off the
  position ids).
* unsloth: Unsloth's FastLanguageModel + the same Trainer, where unsloth imports (else "skipped: why").
* engine: `worker.engine.train` with its GPU levers on: packing (flash-attn varlen where installed), Liger
  (where installed), bf16 LoRA branches (worker/lora16.py), no gradient checkpointing.
* engine-no-packing / engine-no-liger / engine-no-lora16: each lever off in turn.
* engine-defaults: the product's TrainConfig defaults (packing and Liger off).
* engine-gc: engine plus gradient checkpointing (the peers' memory setting, for a like-for-like memory row).

Figures per set-up: tokens/s (real, non-padding tokens of the last `--timed` steps over their wall time,
the same token count for every set-up), peak memory, MFU (worker.mfu's formula, the engine's: 4 x frozen base
+ 6 x trainable + 12 x layers x hidden x mean example length FLOPs per token, over the device's dense bf16
peak; the same FLOPs per token for every set-up), and the loss of the last step. Loss agreement: the mean
loss of the last 5 steps of each set-up against hf-a's, relative difference <= LOSS_TOLERANCE (3 %), else
the row is flagged "LOSS DIFFERS" (a faster run that learns differently does not count).

--longest-context: each set-up at batch 1 on one example of --seq tokens, doubling until it runs out of
memory (2 steps per length); prints the longest length that trained.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOSS_TOLERANCE = 0.03  # relative difference of the mean loss of the last LOSS_WINDOW steps against hf-a
LOSS_WINDOW = 5
REFERENCE = "hf-a"
SETUPS = (
    "hf-a",
    "hf-b",
    "unsloth",
    "engine",
    "engine-no-packing",
    "engine-no-liger",
    "engine-no-lora16",
    "engine-defaults",
    "engine-gc",
)
SIZES: dict[str, dict[str, int]] = {
    "0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=8),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2),
}  # fmt: skip
WORDS = (
    "the a meeting city date move book order invoice ship deliver Berlin Paris Lima Austin Tokyo Oslo Monday "
    "Friday morning evening please confirm cancel reschedule customer account refund address phone email "
    "price total tax discount item quantity product warehouse report summary answer question because after"
).split()


# --- pure functions (unit-tested in tests/worker/test_bench_gpu_train.py) -----------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    p.add_argument("--seq", type=int, default=None, help="tokens per packed step (2048; 64 with --dry-run-cpu)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per set-up (30; 4 dry)")
    p.add_argument("--timed", type=int, default=None, help="the last this many steps are timed (20; 2 dry)")
    p.add_argument("--batch", type=int, default=None, help="examples per step (8; 2 dry)")
    p.add_argument("--setups", default=",".join(SETUPS), help="comma-separated subset of: " + ", ".join(SETUPS))
    p.add_argument("--qlora", action="store_true", help="also every set-up with a QLoRA NF4 base")
    p.add_argument("--longest-context", action="store_true", help="also the longest context per set-up")
    p.add_argument("--max-context", type=int, default=131072, help="stop doubling here")
    p.add_argument("--model", default="", help="a local model folder instead of the random one")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--timeout", type=int, default=300, help="seconds per set-up child")
    p.add_argument("--dry-run-cpu", action="store_true", help="tiny model on the CPU; proves the script only")
    a = p.parse_args(argv)
    dry = a.dry_run_cpu
    a.seq = (64 if dry else 2048) if a.seq is None else a.seq
    a.steps = (4 if dry else 30) if a.steps is None else a.steps
    a.timed = (2 if dry else 20) if a.timed is None else a.timed
    a.batch = (2 if dry else 8) if a.batch is None else a.batch
    a.setup_list = [s.strip() for s in a.setups.split(",") if s.strip()]
    unknown = [s for s in a.setup_list if s not in SETUPS]
    if unknown:
        p.error(f"unknown set-up(s): {', '.join(unknown)}")
    if a.seq < 8 or a.batch < 1:
        p.error("--seq must be at least 8 and --batch at least 1")
    if not 1 <= a.timed < a.steps:
        p.error("--timed must be at least 1 and below --steps (step 1 is warm-up)")
    return a


def mean_last(losses: list[float], window: int = LOSS_WINDOW) -> float:
    tail = losses[-window:]
    return sum(tail) / len(tail)


def loss_difference(reference: list[float], losses: list[float], window: int = LOSS_WINDOW) -> float:
    """Relative difference of the mean loss of the last `window` steps."""
    ref = mean_last(reference, window)
    return abs(mean_last(losses, window) - ref) / abs(ref)


def loss_agrees(reference: list[float], losses: list[float], tolerance: float = LOSS_TOLERANCE) -> bool:
    return len(losses) == len(reference) and loss_difference(reference, losses) <= tolerance


def timed_tokens_per_s(step_tokens: list[int], step_times: list[float], timed: int) -> float:
    """Tokens of the last `timed` steps over the time from the end of the step before them to the end of the
    last one (step_times[i]: when step i+1 ended)."""
    seconds = step_times[-1] - step_times[-timed - 1]
    return sum(step_tokens[-timed:]) / seconds


def engine_config(setup: str, *, cuda: bool, liger_ok: bool, qlora: bool, common: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields of an engine set-up."""
    cfg = dict(common, qlora=qlora)
    if setup == "engine-defaults":
        return cfg
    cfg.update(packing=True, liger=cuda and liger_ok)
    if setup == "engine-no-packing":
        cfg["packing"] = False
    elif setup == "engine-no-liger":
        cfg["liger"] = False
    elif setup == "engine-gc":
        cfg["gradient_checkpointing"] = True
    return cfg


def skip_reason(setup: str, *, cuda: bool, has: dict[str, bool], qlora: bool) -> str | None:
    """Why a set-up cannot run here (None: it can)."""
    if qlora and not cuda:
        return "skipped: QLoRA NF4 (bitsandbytes) needs CUDA"
    if qlora and not has.get("bitsandbytes"):
        return "skipped: bitsandbytes not installed"
    if setup == "unsloth":
        if not cuda:
            return "skipped: Unsloth needs a CUDA GPU"
        if not has.get("unsloth"):
            return "skipped: unsloth not installed on this machine (pip install unsloth; needs network)"
    if setup == "hf-b" and cuda and not has.get("liger_kernel"):
        return "skipped: liger_kernel not installed"
    if setup == "engine-no-liger" and not (cuda and has.get("liger_kernel")):
        return "skipped: Liger is off already here (" + ("not installed)" if cuda else "needs CUDA)")
    return None


# --- data and model ---------------------------------------------------------------------------------------


def tokens_per_word(model: str) -> tuple[float, int]:
    """(tokens per synthetic word, tokens of an example's chat template around its text) for this tokenizer."""
    from worker.modeling import load_tokenizer

    tok = load_tokenizer(model)
    rng = random.Random(1)
    text = " ".join(rng.choice(WORDS) for _ in range(400))
    per_word = len(tok(text, add_special_tokens=False)["input_ids"]) / 400
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "a"}]
    overhead = len(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])
    return per_word, overhead


def write_data(
    path: Path, n: int, mean_tokens: int, calibration: tuple[float, int], seed: int = 0, spread: float = 0.5
) -> Path:
    """Synthetic chat examples of about `mean_tokens` tokens each (1 - spread to 1 + spread x), seeded; the
    answer is a quarter of the words."""
    rng = random.Random(seed)
    per_word, overhead = calibration
    with path.open("w") as f:
        for _ in range(n):
            target = rng.uniform(1 - spread, 1 + spread) * mean_tokens
            words = max(4, int((target - overhead) / per_word))
            user = " ".join(rng.choice(WORDS) for _ in range(max(2, words - words // 4)))
            answer = " ".join(rng.choice(WORDS) for _ in range(max(2, words // 4)))
            msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def build_model(folder: Path, size: str, device: str) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from bench.gpu_check import tokenizer_into

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_into(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=262144,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **SIZES[size],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(folder)


@dataclass
class Plan:
    """The examples of every step (indices into the tokenized data), their real tokens, the mean length."""

    steps: list[list[int]]
    tokens: list[int]
    mean_length: float


def common_config(a: argparse.Namespace, steps: int, batch: int, seq: int) -> dict[str, Any]:
    return dict(
        target_preset="all_linear",
        rank=16,
        alpha=32,
        dropout=0.0,
        batch_size=batch,
        grad_accum=1,
        max_seq_length=seq,
        max_steps=steps,
        warmup_ratio=0.0,
        lr_scheduler="linear",
        weight_decay=0.0,
        max_grad_norm=1.0,
        learning_rate=1e-3,  # the engine's default: enough for the loss to fall visibly in 30 steps
        save_every=10_000_000,
        final_eval=False,
        seed=42,
    )


def make_plan(model: str, data: Path, cfg_fields: dict[str, Any]) -> Plan:
    from worker.batching import MicroBatchStream
    from worker.config import TrainConfig
    from worker.data.normalized import read_normalized_jsonl
    from worker.data.tokenization import tokenize_examples
    from worker.modeling import load_tokenizer
    from worker.schedule import plan_steps

    cfg = TrainConfig(**cfg_fields)
    examples = tokenize_examples(load_tokenizer(model), read_normalized_jsonl(data), cfg.max_seq_length)
    per_epoch, total = plan_steps(len(examples), cfg)
    stream = MicroBatchStream(examples, cfg, per_epoch)
    steps = [[i for b in stream.for_step(s)[1] for i in b] for s in range(1, cfg.max_steps + 1)]
    tokens = [sum(len(examples[i].input_ids) for i in step) for step in steps]
    lengths = [e.length for e in examples]
    return Plan(steps, tokens, sum(lengths) / len(lengths))


# --- the parent ----------------------------------------------------------------------------------------------


def run_child(job: dict[str, Any], work: Path, timeout: int) -> dict[str, Any]:
    job_file = work / f"job-{job['setup']}-{job['qlora']}-{job['max_len']}.json"
    job_file.write_text(json.dumps(job))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "gpu_train_child.py"), str(job_file)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    line = next((r for r in done.stdout.splitlines() if r.startswith("RESULT ")), None)
    if line is None:
        tail = (done.stdout + done.stderr)[-1500:]
        oom = "out of memory" in tail.lower()
        return {"error": f"child exited {done.returncode} with no result: {' '.join(tail[-300:].split())}", "oom": oom}
    got = json.loads(line[7:])
    got["wall_s"] = time.monotonic() - started
    if "error" in got:
        print((done.stderr or "")[-2000:], file=sys.stderr)
    return got


def mfu_of(flops_per_token: float | None, tokens_per_s: float, peak: float | None) -> float | None:
    from worker.mfu import mfu

    return None if flops_per_token is None else mfu(flops_per_token, tokens_per_s, peak)


def flops_per_token(model: str, trainable: int, mean_length: float) -> float:
    """worker.mfu's FLOPs per token for this model with `trainable` adapter parameters (the engine's formula)."""
    from worker.mfu import model_flops_per_token
    from worker.modeling import meta_model

    config, meta = meta_model(model)
    params = sum(p.numel() for p in meta.parameters())
    inputs, outputs = meta.get_input_embeddings(), meta.get_output_embeddings()
    embedding = inputs.weight.numel() if outputs is None or outputs.weight is not inputs.weight else 0
    return model_flops_per_token(
        params=params + trainable,
        trainable=trainable,
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        seq_len=mean_length,
        embedding_params=embedding,
    )


def throughput_table(a: argparse.Namespace, model: str, data: Path, work: Path, env: dict[str, Any]) -> list[dict]:
    rows: list[dict] = []
    fields = common_config(a, a.steps, a.batch, a.seq)
    plan = make_plan(model, data, fields)
    print(
        f"plan: {a.steps} steps x {a.batch} examples, mean {statistics.mean(plan.tokens):.0f} real tokens per step "
        f"(packed row), mean example {plan.mean_length:.0f} tokens; last {a.timed} steps timed",
        flush=True,
    )
    for qlora in [False, True] if a.qlora or a.dry_run_cpu else [False]:
        base = "QLoRA NF4" if qlora else "LoRA bf16"
        for setup in a.setup_list:
            row: dict[str, Any] = {"setup": setup, "base": base}
            rows.append(row)
            why = skip_reason(setup, cuda=env["cuda"], has=env["has"], qlora=qlora)
            if why:
                row["status"] = why
                print(f"[{base}] {setup}: {why}", flush=True)
                continue
            config = (
                engine_config(setup, cuda=env["cuda"], liger_ok=env["has"]["liger_kernel"], qlora=qlora, common=fields)
                if setup.startswith("engine")
                else fields
            )
            job = dict(
                setup=setup,
                qlora=qlora,
                cuda=env["cuda"],
                dry=a.dry_run_cpu,
                model=model,
                data=str(data),
                config=config,
                plan=plan.steps,
                max_len=a.seq,
            )
            got = run_child(job, work, a.timeout)
            if "error" in got:
                row["status"] = "FAIL: " + got["error"]
                print(f"[{base}] {setup}: {row['status']}", flush=True)
                continue
            if len(got["times"]) != a.steps or len(got["losses"]) != a.steps:
                row["status"] = f"FAIL: {len(got['times'])} step times, {len(got['losses'])} losses (want {a.steps})"
                continue
            tps = timed_tokens_per_s(plan.tokens, got["times"], a.timed)
            fpt = flops_per_token(model, got["trainable"], plan.mean_length)
            row.update(
                status="ok",
                tokens_per_s=tps,
                peak_mb=got["peak_mb"],
                mfu_pct=None if (m := mfu_of(fpt, tps, env["peak"])) is None else 100 * m,
                final_loss=got["losses"][-1],
                losses=got["losses"],
                trainable=got["trainable"],
                attention=got["attention"],
                wall_s=got["wall_s"],
                config={k: config[k] for k in ("packing", "liger", "gradient_checkpointing") if k in config},
            )
            print(f"[{base}] {setup}: {tps:,.0f} tokens/s, peak {got['peak_mb']:,.0f} MB", flush=True)
        reference = next((r for r in rows if r["base"] == base and r["setup"] == REFERENCE and "losses" in r), None)
        for r in rows:
            if r["base"] == base and "losses" in r and reference is not None:
                r["loss_diff"] = loss_difference(reference["losses"], r["losses"])
                r["loss_ok"] = loss_agrees(reference["losses"], r["losses"])
    return rows


def print_table(rows: list[dict], memory: str) -> None:
    print(
        f"\n{'base':<10} {'set-up':<18} {'tokens/s':>10} {f'peak {memory} MB':>14} {'MFU %':>6} {'loss 1st→last':>15} "
        f"{'Δloss(last5)':>12}  note"
    )
    for r in rows:
        if r.get("status") != "ok":
            print(f"{r['base']:<10} {r['setup']:<18} {'':>10} {'':>14} {'':>6} {'':>15} {'':>12}  {r['status']}")
            continue
        diff = r.get("loss_diff")
        flag = "" if diff is None or r.get("loss_ok") else f"LOSS DIFFERS (> {100 * LOSS_TOLERANCE:.0f} %) "
        mfu = "–" if r["mfu_pct"] is None else f"{r['mfu_pct']:.1f}"
        print(
            f"{r['base']:<10} {r['setup']:<18} {r['tokens_per_s']:>10,.0f} {r['peak_mb']:>14,.0f} {mfu:>6} "
            f"{r['losses'][0]:>7.3f}→{r['final_loss']:<7.3f} {'–' if diff is None else f'{100 * diff:.2f} %':>12}  {flag}{r['attention']}"
        )
    print(flush=True)


def longest_context(a: argparse.Namespace, model: str, work: Path, env: dict[str, Any]) -> list[dict]:
    """Batch 1, one example of `length` tokens, doubling from --seq until a child runs out of memory."""
    rows = []
    calib = tokens_per_word(model)
    for qlora in [False, True] if a.qlora or a.dry_run_cpu else [False]:
        base = "QLoRA NF4" if qlora else "LoRA bf16"
        for setup in a.setup_list:
            why = skip_reason(setup, cuda=env["cuda"], has=env["has"], qlora=qlora)
            if why:
                rows.append({"setup": setup, "base": base, "status": why})
                continue
            length, best, stop = a.seq, 0, ""
            while length <= a.max_context:
                data = write_data(work / f"long-{length}.jsonl", 2, int(length * 0.97), calib, seed=1, spread=0.0)
                fields = common_config(a, 2, 1, length)
                plan = make_plan(model, data, fields)
                config = (
                    engine_config(setup, cuda=env["cuda"], liger_ok=env["has"]["liger_kernel"], qlora=qlora,
                                  common=fields)
                    if setup.startswith("engine") else fields
                )  # fmt: skip
                job = dict(setup=setup, qlora=qlora, cuda=env["cuda"], dry=a.dry_run_cpu, model=model,
                           data=str(data), config=config, plan=plan.steps, max_len=length)  # fmt: skip
                got = run_child(job, work, a.timeout)
                if "error" in got:
                    stop = "out of memory" if got.get("oom") else "FAIL: " + " ".join(got["error"].split())[:160]
                    break
                best = max(plan.tokens)
                length *= 2
            else:
                stop = f"reached --max-context {a.max_context}"
            status = stop if stop.startswith("FAIL") else "ok"
            rows.append({"setup": setup, "base": base, "status": status, "longest_tokens": best, "stopped": stop})
            print(f"[{base}] {setup}: longest context that trained {best:,} tokens ({stop})", flush=True)
    print(f"\n{'base':<10} {'set-up':<18} {'longest context':>16}  stopped by")
    for r in rows:
        got = f"{r['longest_tokens']:,}" if r["status"] == "ok" else ""
        print(f"{r['base']:<10} {r['setup']:<18} {got:>16}  {r.get('stopped') or r['status']}")
    print(flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from worker.kernels import has_package
    from worker.mfu import device_peak_flops

    cuda = not a.dry_run_cpu
    if cuda and not torch.cuda.is_available():
        print("gpu_train: no CUDA device here; run with --dry-run-cpu to check the script.")
        return 0
    name = torch.cuda.get_device_name(0) if cuda else "CPU (dry run: no figure means anything)"
    peak = device_peak_flops(name, "bf16") if cuda else None
    if cuda and os.environ.get("GPU_PEAK_TFLOPS"):
        peak = float(os.environ["GPU_PEAK_TFLOPS"]) * 1e12
    env = {
        "cuda": cuda,
        "peak": peak,
        "has": {n: has_package(n) for n in ("liger_kernel", "flash_attn", "bitsandbytes", "unsloth")},
    }
    print(f"gpu_train: {name}, torch {torch.__version__}, installed: {env['has']}", flush=True)
    results: dict[str, Any] = {"device": name, "args": vars(a)}
    with tempfile.TemporaryDirectory(prefix="gpu-train-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        if a.model:
            model = a.model
        elif a.dry_run_cpu:
            model = str(tiny_model(work / "model"))
        else:
            model = str(build_model(work / "model", a.size, "cuda"))
            torch.cuda.empty_cache()
        print(f"model ready after {time.monotonic() - started:.0f} s: {model}", flush=True)
        data = write_data(
            work / "train.jsonl", a.steps * a.batch + a.batch, max(8, a.seq // a.batch), tokens_per_word(model)
        )
        rows = throughput_table(a, model, data, work, env)
        print_table(rows, "GPU" if cuda else "RSS")
        results["throughput"] = rows
        results["loss_rule"] = (
            f"mean loss of the last {LOSS_WINDOW} steps within {100 * LOSS_TOLERANCE:.0f} % (relative) of {REFERENCE}'s"
        )
        if a.longest_context:
            results["longest_context"] = longest_context(a, model, work, env)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=1))
    everything = rows + results.get("longest_context", [])
    failed = [r for r in everything if str(r.get("status", "")).startswith("FAIL") or r.get("loss_ok") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
