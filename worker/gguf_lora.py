"""A PEFT LoRA adapter as one GGUF LoRA file in llama.cpp's format (what its convert_lora_to_gguf.py writes).

Metadata: `general.architecture` "llama", `general.type` "adapter", `adapter.type` "lora" and
`adapter.lora.alpha`. Tensors: for each adapted weight `W` (llama.cpp's name, e.g. `blk.0.attn_q.weight`),
`W.lora_a` holds PEFT's A (rank x in; GGUF dimensions [in, rank]) and `W.lora_b` PEFT's B (out x rank; [rank, out]),
so that llama.cpp adds scale * B (A x) with scale = alpha / rank. The q/k projections' B rows are permuted as the
base's weights are (`permute_rows`). An embedding's A is transposed, as llama.cpp's input embedding expects.

PEFT's own scale per module is alpha_m / r_m (alpha_m / sqrt(r_m) with rsLoRA, alpha_m and r_m from
`alpha_pattern` / `rank_pattern` where they name the module); where it is not lora_alpha / r_m, B is multiplied
by the ratio, so the GGUF adapter computes exactly what PEFT computes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.errors import InputError
from worker.gguf_export import (
    LORA_TYPES,
    GgufFile,
    PlannedTensor,
    Progress,
    check_quantization,
    gguf_tensor_name,
    llama_tensor_map,
    permute_rows,
    permuted_heads,
    read_llama_config,
    tensor_qtype,
    weight_loader,
    write_gguf,
)

FIELD = "adapter"


@dataclass
class _Pair:
    a: str = ""
    b: str = ""
    embedding: bool = False


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """adapter_config.json; InputError when it is missing or describes what llama.cpp's LoRA cannot hold."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise InputError(FIELD, "the adapter folder has no adapter_config.json")
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise InputError(FIELD, f"only LoRA adapters can be exported to GGUF, not {config.get('peft_type')}")
    if config.get("use_dora"):
        raise InputError(
            FIELD, "a DoRA adapter cannot be a GGUF LoRA file (llama.cpp has no DoRA); export it merged instead"
        )
    if config.get("modules_to_save"):
        raise InputError(
            FIELD,
            "the adapter trains whole modules in full (modules_to_save), which a GGUF LoRA file cannot carry; "
            "export it merged instead",
        )
    return config


def _pairs(names: list[str]) -> dict[str, _Pair]:
    """The adapter's tensors grouped by the base weight they adapt (`model.layers.0.self_attn.q_proj.weight`)."""
    pairs: dict[str, _Pair] = {}
    for name in names:
        if name.endswith(".base_layer.weight"):  # the base's own weight, saved beside an embedding LoRA
            continue
        base = name.replace("base_model.model.", "", 1)
        for marker, side, embedding in (
            (".lora_A.weight", "a", False),
            (".lora_B.weight", "b", False),
            (".lora_embedding_A", "a", True),
            (".lora_embedding_B", "b", True),
        ):
            if base.endswith(marker):
                pair = pairs.setdefault(base[: -len(marker)] + ".weight", _Pair(embedding=embedding))
                setattr(pair, side, name)
                break
        else:
            raise InputError(
                FIELD,
                f"the adapter holds {name!r}, which is not a LoRA A or B matrix; a GGUF LoRA file cannot carry it "
                "(export it merged instead)",
            )
    for base, pair in pairs.items():
        if not pair.a or not pair.b:
            raise InputError(FIELD, f"the adapter has only one of the two LoRA matrices of {base}")
    return pairs


def _pattern_value(pattern: dict[str, Any], module: str, default: float) -> float:
    from peft.utils.other import get_pattern_key

    key = get_pattern_key(list(pattern), module)
    return float(pattern.get(key, default))


def lora_scale_correction(config: dict[str, Any], module: str, rank: int) -> float:
    """What B is multiplied by so that llama.cpp's alpha / rank equals PEFT's scale for `module`."""
    alpha = float(config["lora_alpha"])
    module_alpha = _pattern_value(config.get("alpha_pattern") or {}, module, alpha)
    peft_scale = module_alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    return peft_scale * rank / alpha


def _lora_tensors(
    base: str, pair: _Pair, load: Callable[[str], np.ndarray], config: dict[str, Any], base_config: dict[str, Any]
) -> tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]:
    """How to produce lora_a and lora_b for one adapted weight."""
    n_head = permuted_heads(base, base_config)

    def lora_a() -> np.ndarray:
        a = load(pair.a)
        return np.ascontiguousarray(a.T) if pair.embedding else a

    def lora_b() -> np.ndarray:
        b = load(pair.b)
        rank = b.shape[-1]
        correction = lora_scale_correction(config, base.removesuffix(".weight"), rank)
        if correction != 1.0:
            b = b * np.float32(correction)
        return permute_rows(b, n_head) if n_head is not None else b

    return lora_a, lora_b


def _lora_plan(
    adapter_dir: Path, config: dict[str, Any], base_config: dict[str, Any], dtype: str
) -> list[PlannedTensor]:
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise InputError(FIELD, "the adapter folder has no adapter_model.safetensors")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        names = list(f.keys())
        shapes = {n: tuple(f.get_slice(n).get_shape()) for n in names}

    tensor_map = llama_tensor_map(base_config)
    plan = []
    for base, pair in _pairs(names).items():
        name = gguf_tensor_name(base, tensor_map)
        shape_a, shape_b = shapes[pair.a], shapes[pair.b]
        if pair.embedding:
            shape_a = shape_a[::-1]
        lora_a, lora_b = _lora_tensors(base, pair, lambda n: weight_loader(path, n)(), config, base_config)
        plan.append(PlannedTensor(name + ".lora_a", shape_a, tensor_qtype(shape_a, dtype), lora_a))
        plan.append(PlannedTensor(name + ".lora_b", shape_b, tensor_qtype(shape_b, dtype), lora_b))
    if not plan:
        raise InputError(FIELD, "the adapter holds no LoRA matrices")
    return plan


def lora_to_gguf(
    adapter_dir: str | Path,
    base_dir: str | Path,
    out_path: str | Path,
    *,
    dtype: str = "f32",
    name: str | None = None,
    progress: Progress | None = None,
) -> GgufFile:
    """Write the PEFT adapter in `adapter_dir` (for the Llama model in `base_dir`, whose config.json is read)
    as one GGUF LoRA file; `dtype` f32 (llama.cpp's converter's default), f16 or bf16."""
    import gguf

    check_quantization(dtype, LORA_TYPES, "a LoRA GGUF")
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    base_config = read_llama_config(base_dir)
    plan = _lora_plan(adapter_dir, config, base_config, dtype)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name or adapter_dir.name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return write_gguf(writer, plan, Path(out_path), progress)
