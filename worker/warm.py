"""Warm starts for the train worker: the last base model(s) stay loaded between jobs.

`WarmBases` keeps loaded, frozen bases within a memory budget (least recently used evicted first, as
`worker.inference.ModelPool` does for chat), keyed on everything that decides what `load_base_model`
returns: the model folder (resolved) with a fingerprint of its files (names, sizes, mtimes), the
dtype, the device and the quantization. A changed model folder gets a new key, so it is never served
stale.

A job borrows a base with `acquire` and gives it back with `release`. PEFT changes the base in place
(`get_peft_model` swaps Linear layers for LoRA ones, gradient checkpointing and an input hook are
switched on; a QLoRA base keeps its 16-bit norms as loaded, see `worker.modeling.load_base_model`),
so `release` undoes that (`unload()`
puts the original layers back, without merging) and then checks the base against the layout recorded
when it was loaded: every parameter and buffer's name, dtype, shape and storage, and every module's
class. A base that does not match exactly (a job failed half-way through wrapping, PiSSA rewrote the
weights, `modules_to_save` left a module's weight on other storage) is dropped, never kept: the next
job then loads it fresh.
Frozen weights are never written to by training (the optimizer holds only LoRA parameters), so the
same storage means the same values; `tests/worker/test_warm.py` checks the values bit for bit.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.config import TrainConfig
from worker.inference import estimate_base_bytes, module_bytes
from worker.kernels import attn_implementation
from worker.modeling import DeviceChoice, get_quantization_config, load_base_model

log = logging.getLogger(__name__)

MIB = 2**20

Fingerprint = tuple[tuple[str, int, int], ...]  # (name, size, mtime_ns) of each file
# (folder, its fingerprint, dtype, device, quantization, kernels): what decides the loaded base
BaseKey = tuple[str, Fingerprint, str, str, "tuple[str, bool, str] | None", "tuple[bool, str | None]"]
# ((name, class, dtype, shape, data_ptr) of every tensor, (name, class) of every module)
Layout = tuple[tuple[tuple[str, str, str, tuple[int, ...], int], ...], tuple[tuple[str, str], ...]]


def folder_fingerprint(path: str) -> Fingerprint:
    """(name, size, mtime_ns) of every file in a model folder: any rewrite or new file changes it."""
    folder = Path(path)
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))


def base_key(path: str, device: DeviceChoice, cfg: TrainConfig | None) -> BaseKey:
    """What decides the loaded base: folder and its files, dtype, device, quantization and kernels."""
    resolved = str(Path(path).resolve())
    quant = get_quantization_config(cfg, device) if cfg is not None else None
    quant_key = (
        None
        if quant is None
        else (quant.bnb_4bit_quant_type, quant.bnb_4bit_use_double_quant, str(quant.bnb_4bit_compute_dtype))
    )
    # Liger patches the base's modules and flash-attention is chosen at load: a base loaded either way is
    # kept apart from a plain one.
    kernels = (bool(cfg and cfg.liger), attn_implementation(cfg, device))
    return resolved, folder_fingerprint(resolved), str(device.dtype), device.device, quant_key, kernels


def layout(model: Any) -> Layout:
    """The base's structure and storage: (name, class, dtype, shape, data_ptr) of every tensor, every module class."""
    tensors = tuple(
        (name, type(t).__name__, str(t.dtype), tuple(t.shape), t.data_ptr())
        for name, t in list(model.named_parameters()) + list(model.named_buffers())
    )
    modules = tuple((name, type(m).__name__) for name, m in model.named_modules())
    return tensors, modules


def restore_base(model: Any) -> Any:
    """The plain base under a (possibly partly) PEFT-wrapped model: LoRA layers removed without merging,
    gradient checkpointing and the input-grad hook off, every weight frozen, eval mode."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.unload()
    elif hasattr(model, "peft_config"):  # get_peft_model failed half-way: LoRA layers may be in it
        return None
    if getattr(model, "is_activation_checkpointing", getattr(model, "is_gradient_checkpointing", False)):
        model.gradient_checkpointing_disable()
    if getattr(model, "_require_grads_hook", None) is not None:
        model.disable_input_require_grads()
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    model.config.use_cache = False
    return model


@dataclass
class WarmBase:
    key: BaseKey
    model: Any  # None once dropped
    layout: Layout
    bytes: int
    in_use: bool = field(default=False)


class WarmBases:
    """Frozen bases kept between jobs within `budget_mb` (0 keeps none); thread-safe."""

    def __init__(self, budget_mb: float) -> None:
        if budget_mb < 0:
            raise ValueError(f"budget_mb must be >= 0 (0: keep none), got {budget_mb}")
        self.budget_bytes = int(budget_mb * MIB)
        self._kept: OrderedDict[BaseKey, WarmBase] = OrderedDict()  # least recently used first
        self._lent: dict[int, WarmBase] = {}  # id(model) -> the entry it was lent from, or a new one
        self._lock = threading.Lock()
        self.loads = self.hits = self.dropped = 0

    @property
    def kept_bytes(self) -> int:
        return sum(e.bytes for e in self._kept.values())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "budget_mb": round(self.budget_bytes / MIB, 1),
                "kept_mb": round(self.kept_bytes / MIB, 1),
                "kept": len(self._kept),
                "loads": self.loads,
                "hits": self.hits,
                "dropped": self.dropped,
            }

    def acquire(
        self,
        path: str,
        device: DeviceChoice,
        cfg: TrainConfig | None = None,
        announce: Callable[[bool], None] | None = None,
    ) -> tuple[Any, bool]:
        """(base model, warm): the kept base for this key (warm=True), else a freshly loaded one.

        `announce(warm)` is called before any loading, so the job's log says which it is while it waits.
        The base is lent out: no other job gets it until `release`.
        """
        key = base_key(path, device, cfg)
        with self._lock:
            entry = self._kept.pop(key, None)
            for stale in [k for k in self._kept if k[0] == key[0] and k[1] != key[1]]:  # the folder changed
                self._kept.pop(stale).model = None
                self.dropped += 1
            if entry is not None:
                self.hits += 1
                self._lent[id(entry.model)] = entry
        if announce is not None:
            announce(entry is not None)
        if entry is not None:
            return entry.model, True
        if self._kept:  # the new base and the kept ones together within the budget: make room first
            self._evict_until(self.budget_bytes - estimate_base_bytes(key[0], device.dtype))
        model = load_base_model(path, device, cfg)
        entry = WarmBase(key, model, layout(model), module_bytes(model))
        with self._lock:
            self.loads += 1
            self._lent[id(model)] = entry
        return model, False

    def release(self, model: Any, *, reusable: bool = True) -> bool:
        """Take back a lent base (or the PEFT model wrapping it); returns True when it is kept for the next job.

        `reusable=False` drops it (the job rewrote the base's weights, as PiSSA does).
        """
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        with self._lock:
            entry = self._lent.pop(id(base), None)
        if entry is None:
            return False
        kept = False
        if reusable:
            restored = restore_base(model)
            if restored is not None and layout(restored) == entry.layout:
                kept = self._keep(entry)
            else:
                log.warning("base model %s changed during the job; not kept for the next one", entry.key[0])
        if not kept:
            self.dropped += 1
            entry.model = None
            self._release_memory()
        return kept

    def _keep(self, entry: WarmBase) -> bool:
        """Keep `entry`, evicting least recently used bases to stay within the budget; False if it cannot fit."""
        if entry.bytes > self.budget_bytes:
            return False
        self._evict_until(self.budget_bytes - entry.bytes)
        with self._lock:
            self._kept[entry.key] = entry
        return True

    def _evict_until(self, room: int) -> None:
        """Drop least recently used kept bases until they hold at most `room` bytes."""
        evicted = False
        with self._lock:
            while self._kept and self.kept_bytes > max(0, room):
                _, victim = self._kept.popitem(last=False)
                victim.model = None
                self.dropped += 1
                evicted = True
                log.info("evicted warm base %s to stay within %.0f MB", victim.key[0], self.budget_bytes / MIB)
        if evicted:
            self._release_memory()

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
        self._release_memory()

    @staticmethod
    def _release_memory() -> None:
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
