"""Every CUDA path of the product on one machine, with figures; run by `bench/gpu_check.sh`.

    .venv/bin/python bench/gpu_check.py [--model DIR] [--steps 12] [--out DIR]

Offline: with no `--model` (or GPU_CHECK_MODEL) it builds a ~0.46B-parameter Llama (hidden 1024,
24 layers, MLP 4096, 16 heads / 8 KV heads, untied 49k vocabulary) with random weights, with the
demo model's tokenizer (converted from the bundled GGUF when missing) or, failing that, the tests'
small tokenizer. Random weights are fine here: the checks are about speed, memory and that every
path runs, not about what the model says.

Checks (each prints one line of figures and PASS / FAIL / SKIP):
1-2. LoRA bf16 and QLoRA NF4 (all linear layers, rank 16), each plain, with packing, with Liger kernels
   (`liger`) and with both: tokens/s, peak GPU memory and MFU per run, then one table of the eight. Packing
   uses flash-attention's variable-length kernels where flash_attn is installed (padding-free), else SDPA
   with the block-diagonal mask (the row says which). Liger runs print "skipped: liger_kernel not installed"
   where it is not.
3. Paged 8-bit AdamW with a checkpoint round trip: pause at step 3 (checkpoint), resume to step 6;
   the resumed losses must match an uninterrupted run within 2 % (bf16 kernels are not bit-exact).
4. DDP on 2 GPUs (when there are 2): devices=2 against devices=1 on the same job: tokens/s ratio and
   the largest relative loss difference. Then FSDP (devices=2, sharding=fsdp) on the same job: the same
   figures, each rank's share of the base as the run reports it, and rank 0's peak GPU memory against
   DDP's (FSDP must need less).
5. The chat worker's batched generation (`ModelPool.generate_many`, base + adapter rows in one
   `generate`): new tokens/s for 8 rows.

tokens/s is the median of the engine's per-step `tokens_per_s` over the last 8 steps (non-padding tokens;
12 steps per run by default, so compilation and warm-up stay out). MFU is the median of the engine's own
per-step `mfu` (worker.mfu: 4 x frozen base + 6 x trainable parameters + 12 x layers x hidden x length FLOPs
per token, over the GPU's dense peak for the base's dtype from worker.mfu's table; GPU_PEAK_TFLOPS overrides
the peak). Unknown GPUs print no MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "worker" / "demo_data" / "demo_dataset.jsonl"
DEMO_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
TIMED_STEPS = 8  # tokens/s and MFU: the median over this many last steps of a run
results: list[dict] = []
DEVICE = "cuda"  # "cpu" with --dry-run-cpu: the script's own smoke test on a machine without a GPU


def say(check: str, status: str, **figures) -> None:
    results.append({"check": check, "status": status, **figures})
    shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"[{status}] {check}: {shown}", flush=True)


def tokenizer_into(folder: Path) -> None:
    """The demo model's tokenizer (offline, from the bundled GGUF), else the tests' tiny one."""
    try:
        from worker.demo_model import convert_gguf_to_hf, find_demo_gguf, is_complete_model_dir

        if not is_complete_model_dir(DEMO_MODEL):
            convert_gguf_to_hf(find_demo_gguf(), DEMO_MODEL)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(DEMO_MODEL).save_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - any failure falls back to the small tokenizer
        print(f"(demo tokenizer unavailable: {exc}; using the tests' tokenizer)", flush=True)
        from tests.tiny_model import build_tokenizer

        build_tokenizer(folder)


def build_model(folder: Path) -> Path:
    """A ~0.46B Llama with random weights, written in bf16 safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_into(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def spec(model: Path, out: Path, **cfg):
    from worker.config import TrainConfig, TrainSpec

    base = dict(
        target_preset="all_linear",
        rank=16,
        alpha=32,
        batch_size=16,
        max_seq_length=256,
        warmup_ratio=0.0,
        save_every=10_000_000,
        final_eval=False,
        seed=42,
    )
    if DEVICE == "cpu" and cfg.get("optimizer") == "paged_adamw_8bit":
        cfg["optimizer"] = "adamw"  # bitsandbytes' paged optimizer is CUDA only
    return TrainSpec(str(model), str(DATA), str(out), TrainConfig(**{**base, **cfg}), device=DEVICE)


def run(spec_, should_stop=None, reporter=None):
    """(result, reporter, peak GPU MB) of one engine run, with the launcher the train worker uses."""
    import torch

    from worker.distributed import run_training
    from worker.reporting import MemoryReporter, never_stop

    if DEVICE == "cpu":
        reporter = reporter or MemoryReporter()
        return run_training(spec_, reporter, should_stop or never_stop), reporter, 0.0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    reporter = reporter or MemoryReporter()
    result = run_training(spec_, reporter, should_stop or never_stop)
    return result, reporter, torch.cuda.max_memory_allocated() / 2**20


def timed_points(reporter) -> list[dict]:
    """The metrics of the last TIMED_STEPS steps (all of them in a shorter run)."""
    return [m for _, m in reporter.points[-TIMED_STEPS:]]


def steady_tokens_per_s(reporter) -> float:
    return statistics.median(m["tokens_per_s"] for m in timed_points(reporter))


def steady_mfu(reporter) -> float | None:
    """The engine's MFU over the timed steps (GPU_PEAK_TFLOPS, when set, replaces the table's peak)."""
    from worker.mfu import device_peak_flops

    values = [m["mfu"] for m in timed_points(reporter) if m.get("mfu") is not None]
    if not values:
        return None
    value = statistics.median(values)
    if os.environ.get("GPU_PEAK_TFLOPS"):
        import torch

        table = device_peak_flops(torch.cuda.get_device_name(), "bf16")
        value = value * table / (float(os.environ["GPU_PEAK_TFLOPS"]) * 1e12)
    return value


def base_params(model: Path) -> int:
    from worker.modeling import meta_model

    return sum(p.numel() for p in meta_model(str(model))[1].parameters())


def has_package(name: str) -> bool:
    from worker.kernels import has_package as found

    return found(name)


def check_training(name: str, model: Path, work: Path, steps: int, n_params: int, **cfg) -> Path | None:
    try:
        result, reporter, peak_mb = run(spec(model, work / name.replace(" ", "-"), max_steps=steps, **cfg))
        figures = {
            "tokens_per_s": steady_tokens_per_s(reporter),
            "peak_gpu_mb": peak_mb,
            "final_loss": result.final_loss,
        }
        mfu = steady_mfu(reporter)
        if mfu is not None:
            figures["mfu_pct"] = 100 * mfu
        say(name, "PASS" if result.status == "succeeded" else "FAIL", **figures)
        return Path(result.adapter_dir) if result.adapter_dir else None
    except Exception as exc:  # noqa: BLE001 - report and go on to the next check
        say(name, "FAIL", error=f"{type(exc).__name__}: {exc}")
        return None


def packing_path() -> str:
    return "flash-attn varlen" if DEVICE == "cuda" and has_package("flash_attn") else "SDPA block mask"


def check_kernel_matrix(model: Path, work: Path, steps: int, n_params: int) -> Path | None:
    """LoRA bf16 and QLoRA, each plain / packing / Liger / both; returns the plain LoRA run's adapter.
    The Liger runs go last: nothing of Liger stays patched after a run (worker.kernels), but a failure there
    must not cost the others."""
    adapter = None
    rows = []
    for liger in (False, True):
        for qlora in (False, True):
            for packing in (False, True):
                name = (
                    ("QLoRA NF4" if qlora else "LoRA bf16")
                    + (f" + packing ({packing_path()})" if packing else "")
                    + (" + Liger" if liger else "")
                )
                rows.append(name)
                if liger and DEVICE == "cpu":
                    say(name, "SKIP", reason="skipped: Liger kernels need CUDA (dry run on the CPU)")
                    continue
                if liger and not has_package("liger_kernel"):
                    say(name, "SKIP", reason="skipped: liger_kernel not installed")
                    continue
                if qlora and DEVICE == "cuda" and not has_package("bitsandbytes"):
                    say(name, "SKIP", reason="skipped: bitsandbytes not installed")
                    continue
                got = check_training(name, model, work, steps, n_params, qlora=qlora, packing=packing, liger=liger)
                if not (liger or qlora or packing):
                    adapter = got
    print_table(rows)
    return adapter


def print_table(names: list[str]) -> None:
    by_name = {r["check"]: r for r in results}
    print(f"\n{'run':<48} {'status':<6} {'tokens/s':>10} {'peak GPU MB':>12} {'MFU %':>7}  note", flush=True)
    for name in names:
        r = by_name.get(name, {})
        tps, mem, mfu = r.get("tokens_per_s"), r.get("peak_gpu_mb"), r.get("mfu_pct")
        note = r.get("reason") or r.get("error") or ""
        print(
            f"{name:<48} {r.get('status', '?'):<6} {'' if tps is None else f'{tps:,.0f}':>10} "
            f"{'' if mem is None else f'{mem:,.0f}':>12} {'–' if mfu is None else f'{mfu:.1f}':>7}  {note}",
            flush=True,
        )
    print(flush=True)


def check_paged_adamw_round_trip(model: Path, work: Path) -> None:
    name = "paged 8-bit AdamW + checkpoint round trip"
    try:
        cfg = dict(max_steps=6, save_every=3, optimizer="paged_adamw_8bit", dropout=0.0)
        _, straight, _ = run(spec(model, work / "paged-straight", **cfg))
        out = work / "paged-resumed"
        from worker.reporting import MemoryReporter

        paused = MemoryReporter()
        first, _, _ = run(spec(model, out, **cfg), lambda: "pause" if len(paused.points) >= 3 else None, paused)
        ckpt_ok = (out / "checkpoints" / "step-000003" / "optimizer.safetensors").is_file()
        resumed_result, resumed, _ = run(spec(model, out, **cfg))
        ref = straight.losses()
        diffs = [abs(loss - ref[step]) / abs(ref[step]) for step, loss in resumed.losses().items()]
        ok = (
            first.status == "paused"
            and ckpt_ok
            and resumed_result.status == "succeeded"
            and sorted(resumed.losses()) == [4, 5, 6]
            and max(diffs) < 0.02
        )
        say(
            name, "PASS" if ok else "FAIL", paused_at=first.steps_done, checkpoint=ckpt_ok, max_rel_loss_diff=max(diffs)
        )
    except Exception as exc:  # noqa: BLE001
        say(name, "FAIL", error=f"{type(exc).__name__}: {exc}")


def check_ddp(model: Path, work: Path, steps: int) -> None:
    import torch

    name = "DDP on 2 GPUs (devices=2 vs 1)"
    if DEVICE == "cuda" and torch.cuda.device_count() < 2:
        say(name, "SKIP", gpus=torch.cuda.device_count())
        return
    try:
        cfg = dict(max_steps=steps, dropout=0.0)
        _, one, _ = run(spec(model, work / "ddp1", devices=1, **cfg))
        result, two, _ = run(spec(model, work / "ddp2", devices=2, **cfg))
        ref, got = one.losses(), two.losses()
        diff = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
        ratio = steady_tokens_per_s(two) / steady_tokens_per_s(one)
        say(
            name,
            "PASS" if result.status == "succeeded" and diff < 0.02 else "FAIL",
            tokens_per_s_1=steady_tokens_per_s(one),
            tokens_per_s_2=steady_tokens_per_s(two),
            speedup=ratio,
            max_rel_loss_diff=diff,
        )
    except Exception as exc:  # noqa: BLE001
        say(name, "FAIL", error=f"{type(exc).__name__}: {exc}")
        return
    check_fsdp(model, work, one, two, cfg)


def peak_mb(reporter) -> float:
    """Rank 0's peak memory as the engine measured it (GPU memory on CUDA)."""
    return max(m["memory_mb"] for _, m in reporter.points)


def check_fsdp(model: Path, work: Path, one, ddp, cfg: dict) -> None:
    name = "FSDP on 2 GPUs (devices=2, sharding=fsdp vs 1 and vs DDP)"
    try:
        result, fsdp, _ = run(spec(model, work / "fsdp2", devices=2, sharding="fsdp", **cfg))
        ref, got = one.losses(), fsdp.losses()
        diff = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
        share = next((m for k, m in fsdp.events if m.startswith("FSDP:")), "")
        smaller = DEVICE == "cpu" or peak_mb(fsdp) < peak_mb(ddp)
        say(
            name,
            "PASS" if result.status == "succeeded" and diff < 0.02 and smaller else "FAIL",
            tokens_per_s_fsdp=steady_tokens_per_s(fsdp),
            vs_ddp=steady_tokens_per_s(fsdp) / steady_tokens_per_s(ddp),
            peak_mb_fsdp=peak_mb(fsdp),
            peak_mb_ddp=peak_mb(ddp),
            max_rel_loss_diff=diff,
            share=share,
        )
    except Exception as exc:  # noqa: BLE001
        say(name, "FAIL", error=f"{type(exc).__name__}: {exc}")


def check_batched_generation(model: Path, adapter: Path | None) -> None:
    import torch

    from worker.config import GenerationConfig
    from worker.inference import ModelPool

    name = "chat worker batched generation (8 rows)"
    try:
        pool = ModelPool(memory_budget_mb=40_000, device=DEVICE)
        rows = [
            (
                [{"role": "user", "content": f"Message {i}: move the meeting to Oct {i + 1} in Berlin."}],
                ("adapter", str(adapter)) if adapter and i % 2 else None,
            )
            for i in range(8)
        ]
        gen = GenerationConfig(max_new_tokens=64)
        pool.generate_many(str(model), rows[:2], GenerationConfig(max_new_tokens=4))  # load and warm up
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        started = time.monotonic()
        answers = pool.generate_many(str(model), rows, gen)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        seconds = time.monotonic() - started
        tok = pool.base(str(model)).tokenizer
        new_tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
        say(
            name,
            "PASS" if len(answers) == 8 else "FAIL",
            new_tokens_per_s=new_tokens / seconds,
            seconds=seconds,
            adapter_rows=4 if adapter else 0,
        )
    except Exception as exc:  # noqa: BLE001
        say(name, "FAIL", error=f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.environ.get("GPU_CHECK_MODEL", ""))
    p.add_argument("--steps", type=int, default=12, help="steps per training run (the last 8 are timed)")
    p.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT", ""), help="write results.json here")
    p.add_argument(
        "--dry-run-cpu",
        action="store_true",
        help="the same checks on the CPU with --model (a smoke test of this script; no figure means anything)",
    )
    args = p.parse_args(argv)
    import logging

    import torch

    global DEVICE
    logging.basicConfig(level=logging.WARNING)
    if args.dry_run_cpu:
        DEVICE = "cpu"
        if not args.model:
            p.error("--dry-run-cpu needs --model (a small local model folder)")
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check.")
        return 0
    else:
        print(
            f"gpu_check: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}",
            flush=True,
        )
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        started = time.monotonic()
        model = Path(args.model) if args.model else build_model(work / "model")
        n_params = base_params(model)
        print(
            f"model {model} ({n_params / 1e9:.2f}B parameters), ready after {time.monotonic() - started:.0f} s",
            flush=True,
        )
        adapter = check_kernel_matrix(model, work, args.steps, n_params)
        check_paged_adamw_round_trip(model, work)
        check_ddp(model, work, min(args.steps, 20))
        check_batched_generation(model, adapter)
        print(f"total {time.monotonic() - started:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))
    return 1 if any(r["status"] == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
