"""The child process of bench/gpu_train.py: one set-up (an HF Trainer peer or the engine) on the planned steps,
its step times, losses and peak memory printed as one `RESULT {json}` line.

    .venv/bin/python bench/gpu_train_child.py JOB.json   # gpu_train.py writes the job file
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def peak_memory_mb(cuda: bool) -> float:
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load_hf_model(job: dict[str, Any], attn: str) -> Any:
    """The PEFT model of an HF set-up: Unsloth's, or transformers' (NF4 with --qlora) wrapped by PEFT."""
    setup, cuda, qlora, cfg = job["setup"], job["cuda"], job["qlora"], job["config"]
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if cuda or job["dry"] else torch.float32
    gc = setup != "unsloth"
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if setup == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            job["model"], max_seq_length=job["max_len"], dtype=torch.bfloat16, load_in_4bit=qlora
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=cfg["rank"],
            lora_alpha=cfg["alpha"],
            lora_dropout=0.0,
            target_modules=targets,
            use_gradient_checkpointing="unsloth",
            random_state=cfg["seed"],
        )
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        kwargs: dict[str, Any] = dict(dtype=dtype, attn_implementation=attn)
        if qlora:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
        if cuda:
            kwargs["device_map"] = {"": 0}
        base = AutoModelForCausalLM.from_pretrained(job["model"], **kwargs)
        if qlora:
            base = prepare_model_for_kbit_training(
                base, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        torch.manual_seed(cfg["seed"])
        lora = LoraConfig(
            r=cfg["rank"], lora_alpha=cfg["alpha"], lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        model = get_peft_model(base, lora)
    return model


def training_args(out: str, cfg: dict[str, Any], *, cuda: bool, gc: bool, liger: bool) -> Any:
    """The Trainer's arguments: the bench's config, bf16 on the GPU, a loss logged every step."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=cfg["learning_rate"],
        max_steps=cfg["max_steps"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=cfg["weight_decay"],
        max_grad_norm=cfg["max_grad_norm"],
        optim="adamw_torch",
        use_cpu=not cuda,
        bf16=cuda,
        gradient_checkpointing=gc,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_liger_kernel=liger,  # hf-b on the CPU dry run: flattening only (Liger needs CUDA)
        seed=cfg["seed"],
        report_to="none",
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def run_hf(job: dict[str, Any]) -> dict[str, Any]:
    """hf-a, hf-b and unsloth: HF Trainer on the planned steps, in order."""
    setup, cuda, qlora = job["setup"], job["cuda"], job["qlora"]
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer, TrainerCallback

    from worker.data.normalized import read_normalized_jsonl
    from worker.data.tokenization import IGNORE_INDEX, tokenize_examples
    from worker.kernels import has_package
    from worker.modeling import load_tokenizer

    cfg = job["config"]
    tok = load_tokenizer(job["model"])
    examples = tokenize_examples(tok, read_normalized_jsonl(Path(job["data"])), cfg["max_seq_length"])
    ordered = [examples[i] for step in job["plan"] for i in step]
    rows = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)} for e in ordered]
    gc = setup != "unsloth"  # Unsloth's own checkpointing is set in load_hf_model
    attn = "flash_attention_2" if setup == "hf-b" and cuda and has_package("flash_attn") else "sdpa"
    model = load_hf_model(job, attn)
    trainable, total = model.get_nb_trainable_parameters()
    if setup == "hf-b":
        collator: Any = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    else:
        collator = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=IGNORE_INDEX)

    class Clock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.losses: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    clock = Clock()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        args = training_args(out, cfg, cuda=cuda, gc=gc and not qlora, liger=setup == "hf-b" and cuda)
        InOrder(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[clock]).train()
    return {
        "times": clock.times,
        "losses": clock.losses,
        "trainable": trainable,
        "total": total,
        "peak_mb": peak_memory_mb(cuda),
        "attention": "unsloth"
        if setup == "unsloth"
        else attn + ("" if cuda or setup != "hf-b" else ", no Liger (CPU)"),
    }


def run_engine(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from worker.config import TrainConfig, TrainSpec
    from worker.engine import train
    from worker.reporting import MemoryReporter

    cuda = job["cuda"]
    if job["setup"] == "engine-no-lora16":
        import worker.lora16

        worker.lora16.compute_lora_in_bf16 = lambda model: 0  # type: ignore[assignment]

    class TimedReporter(MemoryReporter):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def log(self, step, metrics):
            if "loss" in metrics and "tokens_per_s" in metrics:
                if cuda:
                    torch.cuda.synchronize()
                self.times.append(time.perf_counter())
            super().log(step, metrics)

    reporter = TimedReporter()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(**job["config"])
    with tempfile.TemporaryDirectory() as out:
        spec = TrainSpec(job["model"], job["data"], out, cfg, device="cuda" if cuda else "cpu")
        result = train(spec, reporter)
    if result.status != "succeeded":
        raise RuntimeError(f"engine run {result.status}: {getattr(result, 'error', '')}")
    losses = reporter.losses()
    return {
        "times": reporter.times,
        "losses": [losses[s] for s in sorted(losses)],
        "trainable": result.trainable_params,
        "total": None,
        "peak_mb": peak_memory_mb(cuda),
        "attention": "flash-attn varlen" if any("flash-attention" in m for _, m in reporter.events) else "sdpa",
        "events": [m for _, m in reporter.events][:12],
    }


def child(job_file: str) -> int:
    job = json.loads(Path(job_file).read_text())
    if job["setup"] == "unsloth":
        import unsloth  # noqa: F401  (Unsloth patches transformers: it must be imported first)
    sys.path.insert(0, str(ROOT))
    from worker.modeling import quiet_transformers

    quiet_transformers()
    try:
        got = run_hf(job) if not job["setup"].startswith("engine") else run_engine(job)
    except Exception as exc:  # noqa: BLE001 - the parent reports it in the table
        import traceback

        traceback.print_exc()
        oom = "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"
        got = {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "oom": oom}
    print("RESULT " + json.dumps(got), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[1]))
