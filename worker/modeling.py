"""Loading base models and tokenizers, and the PEFT / bitsandbytes factories.

All PEFT and bitsandbytes details live here (like TRL's get_peft_config /
get_quantization_config). Models are loaded from local folders only and never with remote code.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from worker.chat_template import chat_template_refusal
from worker.config import PRECISIONS, ConfigError, TrainConfig
from worker.errors import InputError
from worker.kernels import apply_liger, attn_implementation
from worker.targets import linear_module_suffixes, resolve_modules_to_save, resolve_targets, saveable_modules

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

log = logging.getLogger(__name__)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def quiet_transformers() -> None:
    """No progress bars or advisory warnings in worker logs."""
    import transformers

    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu" | "cuda"
    dtype: torch.dtype  # torch dtype of the frozen base (stored and computed in it); LoRA weights stay fp32

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def precision(self) -> str:
        """The dtype as TrainConfig.precision names it: fp32, bf16 or fp16."""
        return dtype_name(self.dtype)


def dtype_name(dtype: torch.dtype) -> str:
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


# CPU flags of a native bf16 dot product (x86: AVX-512 BF16, AMX; Arm: the BF16 extension). Without one,
# torch emulates bf16 matmuls and they are slower than fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = "/proc/cpuinfo"


CPU_BF16_ENV = "LORA_STUDIO_CPU_BF16"  # "0" / "1" overrides the detection (tests pin it; an operator may too)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively: /proc/cpuinfo's flags (False where unknown), unless
    LORA_STUDIO_CPU_BF16 says 0 or 1."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _cpu_flags_bf16()


@functools.lru_cache(maxsize=1)
def _cpu_flags_bf16() -> bool:
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return any(flag in NATIVE_BF16_FLAGS for flag in value.split())
    except OSError:
        pass
    return False


def choose_device(requested: str = "auto", precision: str = "auto") -> DeviceChoice:
    """The device (CUDA when present, else CPU) and the frozen base's dtype.

    `precision` auto: bf16 on CUDA devices that support it (fp16 on older ones) and on CPUs with
    native bf16, fp32 elsewhere. fp16 is for CUDA only (CPU fp16 matmuls are emulated and slow).
    """
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise InputError("device", f"must be auto, cpu or cuda, got {requested!r}")
    if precision not in PRECISIONS:
        raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    use_cuda = torch.cuda.is_available() and requested in ("auto", "cuda")
    if requested == "cuda" and not use_cuda:
        raise InputError("device", "cuda was requested but no CUDA device is available")
    device = "cuda" if use_cuda else "cpu"
    if precision == "fp32":
        return DeviceChoice(device, torch.float32)
    if use_cuda:
        bf16 = torch.cuda.is_bf16_supported()
        if precision == "bf16" and not bf16:
            raise ConfigError("precision", "this GPU has no bf16 support; pick fp16, fp32 or auto")
        if precision == "fp16":
            return DeviceChoice(device, torch.float16)
        return DeviceChoice(device, torch.bfloat16 if bf16 else torch.float16)
    if precision == "fp16":
        raise ConfigError("precision", "fp16 needs a CUDA GPU (a CPU emulates it slowly); pick bf16, fp32 or auto")
    if precision == "bf16" or cpu_has_native_bf16():
        return DeviceChoice(device, torch.bfloat16)
    return DeviceChoice(device, torch.float32)


def train_device(requested: str, cfg: TrainConfig) -> DeviceChoice:
    """The device and base dtype of a training job: auto keeps fp32 when trained biases (inside the base's
    layers, so at its dtype) are asked for, as the optimizer must update them in fp32."""
    precision = "fp32" if cfg.precision == "auto" and cfg.bias != "none" else cfg.precision
    return choose_device(requested, precision)


def original_dtype(path: str) -> torch.dtype:
    """The dtype the base at `path` was saved in (its config's dtype), fp32 when the config does not say."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def get_quantization_config(cfg: TrainConfig, device: DeviceChoice) -> BitsAndBytesConfig | None:
    """NF4 with double quantization for QLoRA, None otherwise."""
    if not cfg.qlora:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=device.dtype,
    )


INIT_LORA_WEIGHTS: dict[str, bool | Literal["gaussian", "pissa"]] = {
    "default": True,
    "gaussian": "gaussian",
    "pissa": "pissa",
}


LoraBias = Literal["none", "all", "lora_only"]


def get_peft_config(cfg: TrainConfig, targets: list[str]) -> LoraConfig:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # PEFT annotates int; a float scales the same
        lora_dropout=cfg.dropout,
        target_modules=targets,
        bias=cast(LoraBias, cfg.bias),  # TrainConfig checked it
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        init_lora_weights=INIT_LORA_WEIGHTS[cfg.init_lora_weights],
        modules_to_save=list(cfg.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )


def load_tokenizer(path: str) -> Any:
    """The tokenizer of a local model folder, with a pad token; InputError when it has no chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise InputError("base_model", f"the tokenizer in {path} has no chat template")
    return tok


TOKENIZER_CACHE_SIZE = 8


@functools.lru_cache(maxsize=TOKENIZER_CACHE_SIZE)
def cached_tokenizer(path: str) -> Any:
    """`load_tokenizer(path)`, shared by the callers in one process; the least recently used is evicted.

    For the web side, which renders token reports for a few base models again and again: loading a
    tokenizer takes about a second, and an unbounded cache would grow with every model registered.
    Callers must not modify the tokenizer they get.
    """
    return load_tokenizer(path)


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def tokenizer_fingerprint(path: str) -> str:
    """A short hash of the tokenizer files in a model folder (names, sizes and contents): two models
    with the same tokenizer and chat template share it, so token counts are computed once for both."""
    folder = Path(path)
    stamp: list[tuple[str, int, int]] = []
    for name in TOKENIZER_FILES:
        try:
            st = (folder / name).stat()
        except OSError:
            continue
        stamp.append((name, st.st_size, st.st_mtime_ns))
    return _fingerprint(str(folder), tuple(stamp))


@functools.lru_cache(maxsize=64)
def _fingerprint(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _size, _mtime in stamp:
        digest.update(name.encode() + b"\0")
        with open(Path(folder) / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def safetensors_files(path: str) -> list[Path]:
    """The weight files of a local model folder (one file or the shards its index names); [] when it has none."""
    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        import json

        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


class _LazyWeights(dict[str, Any]):
    """name -> a safetensors slice read on demand; from_pretrained deep-copies its arguments, and these
    slices hold open files, so the copy is the dict itself."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _LazyWeights:
        return self


def _load_read(path: str, files: list[Path], **kwargs: Any) -> Any:
    """from_pretrained with each weight read with pread() as it is converted (to 4-bit, or to another dtype).

    Transformers maps the safetensors files into memory, and every page of the stored weights it touches
    while converting counts in the process's resident memory until the files are closed: the whole
    checkpoint at its stored precision, on top of the converted model (the demo model's fp32 file loaded
    into bf16 peaked at 1210 MB, 700 MB this way). Read with pread(), a weight is an ordinary tensor freed
    once converted, so the peak is the converted model plus one stored weight.
    """
    import contextlib

    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    model_class: Any = AutoModelForCausalLM._model_mapping[type(config)]
    with contextlib.ExitStack() as stack:
        weights = _LazyWeights()
        for file in files:
            handle = stack.enter_context(safe_open(str(file), framework="pt", device="cpu", backend="pread"))
            weights.update((name, handle.get_slice(name)) for name in handle.keys())
        model = model_class.from_pretrained(None, config=config, state_dict=weights, **kwargs)
    model.name_or_path = model.config.name_or_path = path  # PEFT writes it into adapter_config.json
    if (Path(path) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


MALLOC_MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, which its dynamic threshold later raises


@functools.cache
def keep_large_buffers_off_the_heap() -> bool:
    """Pin glibc's mmap threshold (and trim threshold) at 128 KiB for this process; False where not glibc.

    QLoRA on CPU dequantizes every 4-bit weight to a full-precision temporary in each forward and
    backward. glibc raises its mmap threshold to the size of each freed mmapped block, so those
    temporaries soon come from the heap instead, where they fragment it: on the demo model about 300 MB
    of the peak resident memory was freed heap that could not be returned. With the threshold pinned,
    every large buffer is its own mapping, given back to the system when freed.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries: nothing to pin
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)) and bool(
        mallopt(m_trim_threshold, MALLOC_MMAP_THRESHOLD)
    )


def load_base_model(path: str, device: DeviceChoice, cfg: TrainConfig | None = None) -> Any:
    """The frozen base, in 4-bit NF4 when cfg.qlora (never held at full precision), else at the device's dtype."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    quant = get_quantization_config(cfg, device) if cfg else None
    kwargs: dict[str, Any] = dict(dtype=device.dtype, trust_remote_code=False, low_cpu_mem_usage=True)
    attention = attn_implementation(cfg, device)
    if attention:
        kwargs["attn_implementation"] = attention
    if quant is not None:
        kwargs["quantization_config"] = quant
        # this process's GPU: 0 alone, GPU r for rank r of a run on several devices (worker.distributed)
        kwargs["device_map"] = {"": torch.cuda.current_device()} if device.is_cuda else {"": "cpu"}
    if quant is not None and not device.is_cuda:
        keep_large_buffers_off_the_heap()
    converted = quant is not None or (not device.is_cuda and original_dtype(path) != device.dtype)
    files = safetensors_files(path) if converted else []
    if files:
        model = _load_read(path, files, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    # A 4-bit base computing in bf16 keeps its other weights (norms, embeddings, the head) in bf16, as loaded,
    # not upcast to fp32 as PEFT's prepare_model_for_kbit_training would: QLoRA's activations are then 16-bit
    # as 16-bit LoRA's are (worker.lora16). In fp16 (older GPUs, no loss scaling) they are upcast here, at load,
    # as PEFT would, for fp16's narrow range. Either way a job leaves the base as it found it (worker.warm).
    if quant is not None and device.dtype == torch.float16:
        upcast_unquantized(model)
    if quant is None and not (cfg is not None and cfg.sharding == "fsdp" and cfg.devices > 1):
        # FSDP (worker.sharding) moves each rank's shard to its GPU: the whole base never sits on one device.
        model.to(device.device)
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg is not None and cfg.liger:
        apply_liger(model)  # before PEFT wraps it (worker.kernels); the engine checked it can
    return model


def upcast_unquantized(model: Any) -> None:
    """The 16-bit weights a 4-bit base keeps as they are (norms, embeddings) in fp32."""
    import torch

    for param in model.parameters():
        if param.dtype in (torch.float16, torch.bfloat16) and type(param).__name__ != "Params4bit":
            param.data = param.data.to(torch.float32)


def build_peft_model(model: Any, cfg: TrainConfig) -> tuple[Any, list[str]]:
    """Wrap the frozen base with LoRA adapters on the configured targets."""
    from peft import get_peft_model

    targets = resolve_targets(linear_module_suffixes(model), cfg.target_preset, cfg.target_modules)
    resolve_modules_to_save(saveable_modules(model), cfg.modules_to_save)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    peft_model = get_peft_model(model, get_peft_config(cfg, targets))  # autocast_adapter_dtype: LoRA in fp32
    upcast_modules_to_save(peft_model)
    return peft_model, targets


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    import torch

    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast_floats(v, dtype) for v in value)
    return value


def upcast_modules_to_save(peft_model: Any) -> None:
    """Train `modules_to_save` copies in fp32 over a 16-bit base, as PEFT does for LoRA weights.

    PEFT copies such a module at the base's dtype, so AdamW would update bf16 weights (updates below
    bf16's resolution are lost). The copy is upcast; hooks feed it fp32 inputs and hand its output back
    at the dtype of its input (the base's dtype for an embedding, whose input is ids).
    """
    import torch
    from peft.utils.other import ModulesToSaveWrapper

    base_dtype = next(
        (p.dtype for p in peft_model.get_base_model().parameters() if p.is_floating_point() and not p.requires_grad),
        torch.float32,
    )
    if base_dtype == torch.float32:
        return
    for wrapper in peft_model.modules():
        if not isinstance(wrapper, ModulesToSaveWrapper):
            continue
        for module in wrapper.modules_to_save.values():
            if all(p.dtype == torch.float32 for p in module.parameters()):
                continue
            module.float()
            module.register_forward_pre_hook(_upcast_inputs, with_kwargs=True)
            module.register_forward_hook(functools.partial(_restore_output, default=base_dtype), with_kwargs=True)


def _upcast_inputs(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import torch

    module._lora_studio_in_dtype = next(
        (a.dtype for a in args if hasattr(a, "is_floating_point") and a.is_floating_point()), None
    )
    return _cast_floats(args, torch.float32), {k: _cast_floats(v, torch.float32) for k, v in kwargs.items()}


def _restore_output(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, *, default: torch.dtype
) -> Any:
    return _cast_floats(output, getattr(module, "_lora_studio_in_dtype", None) or default)


def meta_model(path: str, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """(config, model) of a local model folder built on the meta device: every shape, no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_transformers()
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
            config, trust_remote_code=False, **kwargs
        )
    return config, model


def config_stamp(path: str) -> tuple[int, int]:
    """(mtime, size) of the model folder's config.json, (0, 0) when missing: what facts cached about a model
    folder are keyed by, so a model replaced in place is read again."""
    try:
        st = (Path(path) / "config.json").stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def check_modules_to_save(path: str, names: Iterable[str] | None) -> list[str]:
    """The validated `modules_to_save` for the model at `path` (ConfigError names an unknown one)."""
    return resolve_modules_to_save(list(_saveable_modules(str(path), config_stamp(path))), names) if names else []


@functools.lru_cache(maxsize=16)
def _saveable_modules(path: str, stamp: tuple[int, int]) -> tuple[str, ...]:
    """The model's saveable modules, read once per folder and config.json stamp (a meta model takes ~30 ms)."""
    return tuple(saveable_modules(meta_model(path)[1]))


def describe_model(path: str) -> dict[str, Any]:
    """Architecture, parameter count, Linear layers and chat template of a local model folder.

    Built on the meta device, so no weights are read.
    """
    config, model = meta_model(path)
    tok = load_tokenizer(path)
    return {
        "architecture": (config.architectures or [type(model).__name__])[0],
        "model_type": config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "linear_modules": linear_module_suffixes(model),
        "saveable_modules": saveable_modules(model),
        "has_chat_template": bool(tok.chat_template),
        "chat_template_problem": chat_template_refusal(tok),  # a template past its limits is refused
    }


@functools.lru_cache(maxsize=16)
def context_length(path: str) -> int:
    """How many tokens the model at `path` attends to (prompt and answer together), from its config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
