"""One GGUF export's files, named as they go into the download: the GGUF file(s) and the Ollama `Modelfile`.

- `export_gguf_lora`: `model.gguf` (the base, f16 or bf16; pass `base_gguf` to reuse one made before for the
  same base model) + `adapter.gguf` (the LoRA) + `Modelfile` (FROM model.gguf, ADAPTER adapter.gguf).
- `export_gguf_merged`: `model.gguf` (a merged model folder, f16, bf16 or q8_0) + `Modelfile` (FROM model.gguf).

Progress is reported per file as (stage, tensors written, tensors in the file), stage "base", "adapter" or
"model". `gguf_peak_bytes` is what writing a model needs beyond the process itself (tensor by tensor).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.gguf_export import Progress, model_to_gguf, read_llama_config
from worker.gguf_lora import lora_to_gguf
from worker.gguf_vocab import chat_template_of
from worker.ollama_modelfile import modelfile_text, ollama_chat

MODEL_FILE = "model.gguf"
ADAPTER_FILE = "adapter.gguf"
MODELFILE = "Modelfile"
StageProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GgufExport:
    """The export's files (name in the download -> path), the Modelfile's text and notes for the user."""

    files: dict[str, Path]
    modelfile: str
    notes: tuple[str, ...] = ()


def _stage(progress: StageProgress | None, stage: str) -> Progress | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def _eos_token(folder: Path) -> str | None:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return None
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None


def _write_modelfile(out_dir: Path, tokenizer_dirs: list[Path], adapter: bool) -> tuple[str, tuple[str, ...]]:
    """The Modelfile from the first folder with a chat template (an adapter's own tokenizer before the base's)."""
    template = next((t for t in map(chat_template_of, tokenizer_dirs) if t), None)
    eos = next((e for e in map(_eos_token, tokenizer_dirs) if e), None)
    text = modelfile_text(
        model_file=MODEL_FILE, adapter_file=ADAPTER_FILE if adapter else None, chat_template=template, eos_token=eos
    )
    (out_dir / MODELFILE).write_text(text, encoding="utf-8")
    note = ollama_chat(template, eos).note
    return text, (note,) if note else ()


def export_gguf_lora(
    adapter_dir: str | Path,
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    base_gguf: str | Path | None = None,
    base_quantization: str = "f16",
    lora_dtype: str = "f32",
    progress: StageProgress | None = None,
) -> GgufExport:
    """The adapter as a GGUF LoRA beside its base as a GGUF (made here unless `base_gguf` is given) and a
    Modelfile, written into `out_dir`."""
    adapter_dir, base_dir, out_dir = Path(adapter_dir), Path(base_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if base_gguf is None:
        base = model_to_gguf(
            base_dir, out_dir / MODEL_FILE, quantization=base_quantization, progress=_stage(progress, "base")
        )
        base_gguf, notes = base.path, list(base.notes)
    lora = lora_to_gguf(
        adapter_dir, base_dir, out_dir / ADAPTER_FILE, dtype=lora_dtype, progress=_stage(progress, "adapter")
    )
    text, more = _write_modelfile(out_dir, [adapter_dir, base_dir], adapter=True)
    files = {MODEL_FILE: Path(base_gguf), ADAPTER_FILE: lora.path, MODELFILE: out_dir / MODELFILE}
    return GgufExport(files=files, modelfile=text, notes=tuple(notes) + more)


def export_gguf_merged(
    merged_dir: str | Path, out_dir: str | Path, *, quantization: str = "f16", progress: StageProgress | None = None
) -> GgufExport:
    """A merged model folder (what `worker.export.merge_adapter` writes) as one GGUF and a Modelfile."""
    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model_to_gguf(
        merged_dir, out_dir / MODEL_FILE, quantization=quantization, progress=_stage(progress, "model")
    )
    text, more = _write_modelfile(out_dir, [merged_dir], adapter=False)
    return GgufExport(
        files={MODEL_FILE: model.path, MODELFILE: out_dir / MODELFILE}, modelfile=text, notes=model.notes + more
    )


def gguf_peak_bytes(model_dir: str | Path) -> int:
    """Memory writing the model's GGUF needs at most: its largest weight as read, in float32, permuted and
    encoded (four float32 copies of one tensor; the rest of the model is never in memory)."""
    from safetensors import safe_open

    from worker.gguf_export import safetensors_files

    read_llama_config(model_dir)
    largest = 0
    for path in safetensors_files(Path(model_dir)):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= d
                largest = max(largest, n)
    return 4 * 4 * largest
