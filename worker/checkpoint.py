"""Atomic training checkpoints in PEFT's own format plus a safetensors trainer state.

A checkpoint folder `step-000120/` holds `adapter_model.safetensors`, `adapter_config.json`,
`optimizer.safetensors`, `rng.safetensors` and `trainer_state.json`. It is written to a
temporary folder and renamed into place, so a folder with the final name is always complete.
No pickle anywhere: tensors go through safetensors, the rest through JSON.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"


@contextmanager
def atomic_dir(final: Path):
    """Yield a temp folder beside `final`; on success it is renamed onto `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _optimizer_tensors(optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if hasattr(value, "detach"):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state_dict(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]


def save_checkpoint(root: Path, *, step: int, model, optimizer, scheduler, extra: dict[str, Any]) -> Path:
    """Write the adapter, optimizer, scheduler and RNG state for `step` atomically."""
    import torch
    from safetensors.torch import save_file

    final = Path(root) / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        tensors, meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda{i}"] = s
        save_file(rng, str(tmp / "rng.safetensors"))
        state = {
            "step": step,
            "optimizer": meta,
            "scheduler": scheduler.state_dict(),
            "python_rng": _jsonable(random.getstate()),
            **extra,
        }
        (tmp / STATE_FILE).write_text(json.dumps(state))
    return final


def _jsonable(obj):
    if isinstance(obj, tuple):
        return [_jsonable(x) for x in obj]
    return obj


def _tupled(obj):
    if isinstance(obj, list):
        return tuple(_tupled(x) for x in obj)
    return obj


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The newest complete checkpoint under root, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    for folder in sorted(root.glob("step-*"), reverse=True):
        state_file = folder / STATE_FILE
        if state_file.is_file() and (folder / "adapter_model.safetensors").is_file():
            state = json.loads(state_file.read_text())
            return Checkpoint(folder, int(state["step"]), state)
    return None


def load_adapter_weights(model, folder: Path) -> None:
    """Put the adapter weights saved in `folder` (safetensors) into the PEFT model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(folder) / "adapter_model.safetensors")))


def load_checkpoint(ckpt: Checkpoint, *, model, optimizer, scheduler) -> None:
    """Restore adapter weights, optimizer, scheduler and RNG from a checkpoint."""
    import torch
    from safetensors.torch import load_file

    load_adapter_weights(model, ckpt.path)
    device = next(p for p in model.parameters() if p.requires_grad).device
    tensors = {k: v.to(device) if not k.endswith(".step") else v for k, v in load_file(str(ckpt.path / "optimizer.safetensors")).items()}
    optimizer.load_state_dict(_optimizer_state_dict(tensors, ckpt.state["optimizer"]))
    scheduler.load_state_dict(ckpt.state["scheduler"])
    rng = load_file(str(ckpt.path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda_states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    random.setstate(_tupled(ckpt.state["python_rng"]))


def prune_checkpoints(root: Path, keep: int = 2) -> None:
    """Keep the newest `keep` checkpoints; older ones only cost disk."""
    folders = sorted(Path(root).glob("step-*"))
    for folder in folders[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
