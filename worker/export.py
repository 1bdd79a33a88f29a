"""The adapter zip: PEFT files, tokenizer, training config, metrics, dataset hash, model card."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.tensorboard_events import write_tensorboard_events

TENSORBOARD_DIR = "runs"  # the zip's folder of TensorBoard event files: `tensorboard --logdir runs`

MODEL_CARD = """---
library_name: peft
base_model: {base_model}
tags:
- lora
- lora-studio{method_tags}
---

# {title}

A LoRA adapter for **{base_model}**, trained with LoRA Studio{qlora} by {method}.

## Training

| setting | value |
| --- | --- |
{table}

- Training {unit}: {rows}
- Dataset sha256: `{dataset_sha256}`
- Optimizer steps: {steps}
- Precision: {precision}
- Final training loss: {final_loss}
- Target modules: {targets}
{evaluation}
## How to use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

base = AutoModelForCausalLM.from_pretrained("{base_model}")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
model = PeftModel.from_pretrained(base, "path/to/this/folder")

messages = [{{"role": "user", "content": "Hello"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))
```

To fold the adapter into the base weights for export: `model = model.merge_and_unload()`.

The training curves and settings are in `runs/` as TensorBoard event files: `tensorboard --logdir runs`.
{serving}"""


METHOD_NAMES = {
    "supervised": "supervised fine-tuning (next-token loss on the answers)",
    "dpo": "DPO (direct preference optimization, the base model as reference)",
    "orpo": "ORPO (odds-ratio preference optimization, no reference model)",
}


def model_card(
    *,
    title: str,
    base_model: str,
    config: dict[str, Any],
    rows: int,
    dataset_sha256: str,
    steps: int,
    final_loss: float | None,
    targets: list[str],
    evaluation_md: str = "",
    precision: str = "",
    serving_md: str = "",
) -> str:
    """The adapter's README: settings, data, the run's precision (the frozen base's dtype), evaluation, usage and
    `serving_md` (worker.serving_recipes.recipes_markdown)."""
    table = "\n".join(f"| {k} | {v} |" for k, v in config.items())
    evaluation = f"\n## Evaluation on the validation split\n\n{evaluation_md}\n" if evaluation_md else ""
    kind = config.get("method", "supervised")
    method = METHOD_NAMES.get(kind, kind)
    if kind in ("dpo", "orpo"):
        method += f" (beta {config.get('beta')})"
    return MODEL_CARD.format(
        method=method,
        method_tags=f"\n- {kind}" if kind != "supervised" else "",
        unit="preference pairs" if kind in ("dpo", "orpo") else "examples",
        title=title,
        base_model=base_model,
        table=table,
        rows=rows,
        dataset_sha256=dataset_sha256,
        steps=steps,
        final_loss="n/a" if final_loss is None else f"{final_loss:.4f}",
        targets=", ".join(targets) or "n/a",
        evaluation=evaluation,
        precision=(
            f"{precision} (the frozen base computes in {precision}; LoRA weights and optimizer state are fp32)"
            if precision
            else "n/a"
        ),
        qlora=" as QLoRA (4-bit NF4 base)" if config.get("qlora") else "",
        serving=f"\n{serving_md}" if serving_md else "",
    )


def metrics_csv(points: list[dict[str, Any]]) -> str:
    keys = sorted({k for p in points for k in p}, key=lambda k: (k != "step", k))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(points)
    return buf.getvalue()


def build_adapter_zip(
    adapter_dir: str | Path,
    zip_path: str | Path,
    *,
    card: str,
    config: dict[str, Any],
    metrics: list[dict[str, Any]],
    dataset_sha256: str,
    extra_files: dict[str, str] | None = None,
    walltimes: Mapping[int, float] | None = None,
) -> Path:
    """Write the zip atomically (temp file, then rename). TensorBoard event files of `metrics` go under
    `runs/` (`walltimes`: step -> when it was recorded)."""
    adapter_dir, zip_path = Path(adapter_dir), Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".adapter-", suffix=".zip", dir=zip_path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(adapter_dir.iterdir()):
                if f.is_file() and f.name != "README.md":
                    zf.write(f, f.name)
            zf.writestr("training_config.json", json.dumps(config, indent=2))
            zf.writestr("metrics.csv", metrics_csv(metrics))
            zf.writestr("metrics.json", json.dumps(metrics))
            zf.writestr("dataset.sha256", dataset_sha256 + "\n")
            zf.writestr("README.md", card)
            for name, text in (extra_files or {}).items():
                zf.writestr(name, text)
            with tempfile.TemporaryDirectory(prefix="tensorboard-") as events_dir:
                for f in write_tensorboard_events(events_dir, metrics=metrics, config=config, walltimes=walltimes):
                    zf.write(f, f"{TENSORBOARD_DIR}/{f.relative_to(events_dir).as_posix()}")
        os.replace(tmp, zip_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return zip_path


def merge_adapter(base_path: str, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold B A into W with `merge_and_unload` and save a plain safetensors model with its tokenizer.

    The base is loaded unquantized at the dtype it was saved in (its config's dtype; fp32 when it does not
    say), whatever precision the job trained at, so the merged model is the base's own dtype: a QLoRA adapter
    is merged into the 16-bit base, not into 4-bit weights, and an fp32 base is not rounded to bf16.
    """
    from peft import PeftModel

    from worker.checkpoint import atomic_dir
    from worker.modeling import DeviceChoice, choose_device, load_base_model, load_tokenizer, original_dtype

    device = DeviceChoice(choose_device("auto").device, original_dtype(base_path))
    base = load_base_model(base_path, device)
    # PEFT upcasts the adapter to fp32; merge_and_unload adds B A at fp32 and rounds into W's dtype once.
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(base_path).save_pretrained(tmp)
    return out_dir


def zip_folder(folder: str | Path, zip_path: str | Path) -> Path:
    """Zip a folder's files atomically (stored, not deflated: safetensors do not compress)."""
    folder = Path(folder)
    return zip_files({f.name: f for f in sorted(folder.iterdir()) if f.is_file()}, zip_path)


def zip_files(files: Mapping[str, Path], zip_path: str | Path) -> Path:
    """Zip files under the names given, atomically (stored, not deflated: model weights do not compress)."""
    zip_path = Path(zip_path)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".zip", dir=zip_path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, path in files.items():
                zf.write(path, name)
        os.replace(tmp, zip_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return zip_path
