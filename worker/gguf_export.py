"""A Llama-architecture model or LoRA adapter as GGUF files for llama.cpp, Ollama and LM Studio.

Written with the `gguf` package (llama.cpp's own writer), following llama.cpp's converters:

- `model_to_gguf`: a Hugging Face model folder (config.json, safetensors, tokenizer) -> one GGUF in f16, bf16 or
  q8_0, as convert_hf_to_gguf.py writes a LlamaForCausalLM: its hyperparameters under `llama.*`, the tokenizer
  and chat template (`worker.gguf_vocab`), tensor names mapped by `gguf.get_tensor_name_map`, and the q/k
  projections' rows permuted as its `LlamaModel.permute` does (llama.cpp's rotary embedding pairs the dimensions
  differently from Hugging Face's). The base model of a LoRA export and a merged model both go through it.
- `lora_to_gguf`: a PEFT adapter folder -> one GGUF LoRA file, as convert_lora_to_gguf.py writes it:
  `general.type` "adapter", `adapter.type` "lora", `adapter.lora.alpha`; for each adapted weight
  `<name>.lora_a` (PEFT's A, rank x in) and `<name>.lora_b` (PEFT's B, out x rank), B's rows permuted for q/k.
  llama.cpp scales by alpha / rank; where PEFT's scale differs (rsLoRA, a per-module rank or alpha) the
  difference is folded into B, so the adapter computes what PEFT computes.

The header is written first from the safetensors headers, then each tensor is read, converted and written on
its own, so the memory used is about one tensor's, whatever the model's size.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.errors import InputError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (tensors written, tensors in all)
QUANTIZATIONS = ("f16", "bf16", "q8_0", "q4_k_m")
LORA_TYPES = ("f32", "f16", "bf16")
LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
_QTYPE_NAMES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_k_m": "Q4_K"}
_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


@dataclass(frozen=True)
class GgufFile:
    """A written GGUF: where, how many tensors and bytes, and notes for the user (e.g. a guessed tokenizer)."""

    path: Path
    tensors: int
    bytes: int
    notes: tuple[str, ...] = ()


@dataclass
class PlannedTensor:
    """One tensor to write: its GGUF name, shape (rows first, as numpy), type, and how to produce its values."""

    name: str
    shape: tuple[int, ...]
    qtype: Any
    load: Callable[[], np.ndarray] = field(repr=False)


def quantization_available(quantization: str) -> bool:
    """Whether the `gguf` package on this worker can write `quantization` (its q4_k has no quantizer)."""
    import gguf

    if quantization not in _QTYPE_NAMES:
        return False
    qtype = gguf.GGMLQuantizationType[_QTYPE_NAMES[quantization]]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    try:
        gguf.quants.quantize(np.zeros((1, block), dtype=np.float32), qtype)
    except NotImplementedError:
        return False
    return True


def check_quantization(quantization: str, allowed: tuple[str, ...], what: str) -> None:
    if quantization not in allowed:
        raise InputError("quantization", f"{what} can be {', '.join(allowed)}, not {quantization!r}")
    if not quantization_available(quantization):
        raise InputError(
            "quantization",
            f"{quantization} is not available on this worker: the gguf package cannot quantize to it and "
            "llama.cpp's llama-quantize is not installed; choose f16, bf16 or q8_0",
        )


def read_llama_config(model_dir: str | Path) -> dict[str, Any]:
    """The model's config.json; InputError in plain words when it is missing or not a Llama architecture."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise InputError("model", f"the model folder has no config.json ({Path(model_dir).name})")
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    if not any(a in LLAMA_ARCHITECTURES for a in architectures):
        raise InputError(
            "model",
            f"GGUF export supports Llama-architecture models ({', '.join(LLAMA_ARCHITECTURES)}); this one is "
            f"{', '.join(architectures) or config.get('model_type', 'unknown')}",
        )
    return config


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` of a q/k projection's output rows (n_head: the heads of that projection):
    within each head, Hugging Face's two halves of the rotary pairs become interleaved."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def unpermute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_rows`: llama.cpp's row order back to Hugging Face's."""
    return (
        weight.reshape(n_head, weight.shape[0] // n_head // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def permuted_heads(hf_name: str, config: dict[str, Any]) -> int | None:
    """The heads whose rows `permute_rows` reorders for this weight (None: not a q/k projection)."""
    if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return int(config["num_attention_heads"])
    if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return None


def llama_tensor_map(config: dict[str, Any]) -> Any:
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config["num_hidden_layers"]))


def gguf_tensor_name(hf_name: str, tensor_map: Any) -> str:
    """llama.cpp's name for a Hugging Face weight (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`)."""
    name = tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise InputError("model", f"the weight {hf_name!r} has no counterpart in llama.cpp's Llama layout")
    return str(name)


def tensor_qtype(shape: tuple[int, ...], quantization: str) -> Any:
    """convert_hf_to_gguf's rule: vectors (norms, biases) stay F32; q8_0 rows that do not split into its
    32-value blocks fall back to F16."""
    import gguf

    types = gguf.GGMLQuantizationType
    if len(shape) < 2:
        return types.F32
    qtype = types[_QTYPE_NAMES[quantization]]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:
        return types.F16
    return qtype


def _encode(values: np.ndarray, qtype: Any) -> np.ndarray:
    import gguf

    values = np.ascontiguousarray(values, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F32:
        return values
    if qtype == gguf.GGMLQuantizationType.F16:
        return values.astype(np.float16)
    return np.asarray(gguf.quants.quantize(values, qtype))


def _nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * block_bytes


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise InputError("model", "the model folder has no model.safetensors (only safetensors weights are read)")
    return [single]


def weight_loader(path: Path, name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import torch
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return np.asarray(f.get_tensor(name).to(torch.float32).numpy())

    return load


def _weight_shapes(model_dir: Path) -> Iterator[tuple[str, tuple[int, ...], Path]]:
    """Each weight's name and shape from the safetensors headers (no values are read)."""
    from safetensors import safe_open

    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, tuple(f.get_slice(name).get_shape()), path


def _permuted(load: Callable[[], np.ndarray], n_head: int | None) -> Callable[[], np.ndarray]:
    if n_head is None:
        return load
    return lambda: permute_rows(load(), n_head)


def _model_plan(model_dir: Path, config: dict[str, Any], quantization: str) -> list[PlannedTensor]:
    """The base/merged model's tensors in llama.cpp's names and types, in the files' order."""
    tensor_map = llama_tensor_map(config)
    plan = []
    for hf_name, shape, path in _weight_shapes(model_dir):
        if hf_name.endswith(".rotary_emb.inv_freq"):
            continue
        name = gguf_tensor_name(hf_name, tensor_map)
        load = _permuted(weight_loader(path, hf_name), permuted_heads(hf_name, config))
        plan.append(PlannedTensor(name, shape, tensor_qtype(shape, quantization), load))
    rope = _llama3_rope_factors(config)
    if rope is not None:
        plan.append(
            PlannedTensor("rope_freqs.weight", rope.shape, tensor_qtype(rope.shape, quantization), lambda: rope)
        )
    return plan


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """The rotary settings: `rope_parameters` (transformers 5) or `rope_scaling` with `rope_theta` beside it."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return rope


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _llama3_rope_factors(config: dict[str, Any]) -> np.ndarray | None:
    """The `rope_freqs` tensor convert_hf_to_gguf adds for Llama 3's rope scaling (None for other models)."""
    rope = _rope(config)
    if str(rope.get("rope_type") or rope.get("type") or "").lower() != "llama3":
        return None
    dim = _head_dim(config)
    freqs = 1.0 / (float(rope["rope_theta"]) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _add_hparams(writer: Any, config: dict[str, Any]) -> None:
    """The `llama.*` keys convert_hf_to_gguf writes for a LlamaForCausalLM."""
    import gguf

    writer.add_block_count(int(config["num_hidden_layers"]))
    if config.get("max_position_embeddings"):
        writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    if config.get("head_dim"):
        writer.add_key_length(int(config["head_dim"]))
        writer.add_value_length(int(config["head_dim"]))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_rope_dimension_count(_head_dim(config))
    kind = str(rope.get("rope_type") or rope.get("type") or "").lower()
    if kind == "linear" and rope.get("factor"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind not in ("", "default", "llama3"):
        raise InputError("model", f"the model's rope scaling {kind!r} cannot be exported to GGUF here")


def write_gguf(writer: Any, plan: list[PlannedTensor], out_path: Path, progress: Progress | None) -> GgufFile:
    """Header and tensor infos first, then each tensor loaded, encoded and written on its own; atomically."""
    for t in plan:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), _nbytes(t.shape, t.qtype), raw_dtype=t.qtype)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.part")
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, t in enumerate(plan, start=1):
            data = _encode(t.load(), t.qtype)
            if data.nbytes != _nbytes(t.shape, t.qtype):
                raise ValueError(f"{t.name}: {data.nbytes} bytes where {_nbytes(t.shape, t.qtype)} were declared")
            writer.write_tensor_data(data)
            del data
            if progress:
                progress(done, len(plan))
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return GgufFile(path=out_path, tensors=len(plan), bytes=out_path.stat().st_size)


def model_to_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    *,
    quantization: str = "f16",
    name: str | None = None,
    progress: Progress | None = None,
) -> GgufFile:
    """Write the Hugging Face Llama model in `model_dir` (a base or a merged model) as one GGUF with its
    tokenizer and chat template; `quantization` is f16, bf16 or q8_0 (q4_k_m where this worker can)."""
    import gguf

    from worker.gguf_vocab import add_vocab

    check_quantization(quantization, QUANTIZATIONS, "a model GGUF")
    model_dir = Path(model_dir)
    config = read_llama_config(model_dir)
    plan = _model_plan(model_dir, config, quantization)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    _add_hparams(writer, config)
    writer.add_file_type(gguf.LlamaFileType[_FILE_TYPES.get(quantization, "MOSTLY_F16")])
    vocab = add_vocab(writer, model_dir, int(config["vocab_size"]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    written = write_gguf(writer, plan, Path(out_path), progress)
    notes = (vocab.note,) if vocab.note else ()
    return GgufFile(path=written.path, tensors=written.tensors, bytes=written.bytes, notes=notes)
