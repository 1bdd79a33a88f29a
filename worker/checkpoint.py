"""Atomic, durable training checkpoints in PEFT's own format plus a safetensors trainer state.

A checkpoint folder `step-000120/` holds `adapter_model.safetensors`, `adapter_config.json`,
`optimizer.safetensors`, `rng.safetensors` and `trainer_state.json`. It is written to a
temporary dot-folder, fsynced and renamed into place, so a folder with the final name is always
complete, also after a power cut. No pickle anywhere: tensors go through safetensors, the rest
through JSON.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"
SAFETENSORS_FILES = ("adapter_model.safetensors", "optimizer.safetensors", "rng.safetensors")
# `.NAME.tmp-XXXX` is a folder being written; `.NAME.old-XXXX` the previous NAME while it is replaced.
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[A-Za-z0-9_]+$")


class CheckpointUnreadable(Exception):
    """A checkpoint folder misses a file, or holds a truncated or corrupt one."""

    def __init__(self, folder: Path, reason: str):
        super().__init__(f"checkpoint {Path(folder).name} is unreadable ({reason})")
        self.folder = Path(folder)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folders themselves, to disk."""
    for dirpath, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it is fsynced and renamed onto `final`.

    Under the final name there is always the old complete folder or the new one (see recover_leftovers).
    """
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        parent.mkdir(parents=True)
        _fsync(parent.parent)  # else a power cut can forget the new folder with all it holds
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # rename() cannot replace a non-empty folder, so the old one moves aside first. A crash between
    # the two renames leaves no `final`, only the aside copy: recover_leftovers puts it back.
    aside = parent / f".{final.name}.old-{secrets.token_hex(4)}" if final.exists() else None
    if aside is not None:
        os.rename(final, aside)
    try:
        os.rename(tmp, final)
    except BaseException:
        if aside is not None:
            os.rename(aside, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a fsynced temp file and a rename: readers see the old or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from a web app running as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def recover_leftovers(parent: Path) -> None:
    """Undo what a crash in `atomic_dir` or `write_text_atomic` left in `parent`: put back an old
    folder whose replacement never arrived; remove every other temp or aside dot-entry."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    restored = False
    for entry in sorted(parent.iterdir()):
        match = _LEFTOVER.match(entry.name)
        if match is None:
            continue
        if match["kind"] == "old" and entry.is_dir() and not (parent / match["name"]).exists():
            os.rename(entry, parent / match["name"])
            restored = True
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if restored:
        _fsync(parent)


def _optimizer_tensors(sd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}

    def put(name: str, value: Any) -> None:
        if hasattr(value, "detach"):
            tensors[name] = value.detach().cpu().contiguous()
        elif isinstance(value, dict):  # bitsandbytes 0.50 nests its 8-bit state: "<i>.<key>/<inner key>"
            for inner, item in value.items():
                put(f"{name}{NEST}{inner}", item)
        else:
            scalars[name] = value

    for idx, st in sd["state"].items():
        for key, value in st.items():
            put(f"{idx}.{key}", value)
    groups = []
    for i, group in enumerate(sd["param_groups"]):
        kept: dict[str, Any] = {}
        for key, value in group.items():
            if hasattr(value, "detach"):  # goes back as a tensor, as it was
                name = f"{GROUP_PREFIX}{i}.{key}"
                tensors[name] = value.detach().cpu().contiguous()
                kept[key] = {TENSOR_REF: name}
            else:
                kept[key] = plain(value)
        groups.append(kept)
    return tensors, {"param_groups": groups, "scalars": plain(scalars)}


GROUP_PREFIX = "group"  # optimizer.safetensors: "group<i>.<key>" is a param group's tensor, "<i>.<key>" a state's
TENSOR_REF = "__tensor__"
NEST = "/"


def plain(obj: Any) -> Any:
    """`obj` as JSON can hold it: a hyperparameter kept as a tensor (a tensor learning rate, bitsandbytes' 8-bit
    optimizers) becomes its number (or list), tuples become lists."""
    if hasattr(obj, "detach"):
        value = obj.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(obj, dict):
        return {key: plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(value) for value in obj]
    return obj


def _optimizer_state_dict(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    tensors = dict(tensors)
    groups = [
        {
            key: tensors.pop(value[TENSOR_REF]) if isinstance(value, dict) and TENSOR_REF in value else value
            for key, value in group.items()
        }
        for group in meta["param_groups"]
    ]
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        place = state.setdefault(int(idx), {})
        *outer, key = key.split(NEST)
        for part in outer:
            place = place.setdefault(part, {})
        place[key] = value
    return {"state": state, "param_groups": groups}


@dataclass
class Checkpoint:
    """A checkpoint read whole into memory by `read_checkpoint`, before any of it is loaded."""

    path: Path
    step: int
    state: dict[str, Any]  # trainer_state.json as written
    adapter: dict[str, Any]
    optimizer: dict[str, Any]  # a state dict for optimizer.load_state_dict, tensors on the CPU
    scheduler: dict[str, Any]
    rng: dict[str, Any]  # torch (and CUDA) generator states
    python_rng: tuple[Any, ...]
    best: dict[str, Any]  # the BestTracker state


def save_checkpoint(
    root: Path,
    *,
    step: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    extra: dict[str, Any],
    adapter_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write the adapter, optimizer, scheduler and RNG state for `step` atomically.

    `adapter_state` / `optimizer_state`: the model's and optimizer's state dicts to write instead of theirs (a
    sharded run passes them gathered whole, see worker.sharding), so the files are those of one device.
    """
    import torch
    from safetensors.torch import save_file

    final = Path(root) / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp, state_dict=adapter_state)
        tensors, meta = _optimizer_tensors(optimizer_state or optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda{i}"] = s
        save_file(rng, str(tmp / "rng.safetensors"))
        state = {
            "step": step,
            "optimizer": meta,
            "scheduler": plain(scheduler.state_dict()),
            "python_rng": _jsonable(random.getstate()),
            **extra,
        }
        (tmp / STATE_FILE).write_text(json.dumps(state))
    return final


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return [_jsonable(x) for x in obj]
    return obj


def _tupled(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_tupled(x) for x in obj)
    return obj


def checkpoint_folders(root: Path) -> list[Path]:
    """The checkpoint folders under root, newest first; temp and aside dot-folders are not among them."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)


def read_checkpoint(folder: Path) -> Checkpoint:
    """Read a checkpoint whole, so a damaged one is found before anything is loaded from it.

    Raises CheckpointUnreadable for a missing file, a truncated or corrupt safetensors file or bad JSON.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        adapter, optimizer, rng = (load_file(str(folder / name)) for name in SAFETENSORS_FILES)
        if "torch" not in rng:
            raise CheckpointUnreadable(folder, "rng.safetensors holds no torch generator state")
        ckpt = Checkpoint(
            folder,
            int(state["step"]),
            state,
            adapter,
            _optimizer_state_dict(optimizer, state["optimizer"]),
            dict(state["scheduler"]),
            rng,
            _tupled(state["python_rng"]),
            dict(state.get("best", {})),
        )
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise CheckpointUnreadable(folder, f"{type(exc).__name__}: {exc}") from exc
    return ckpt


def save_adapter(
    model: Any,
    folder: Path,
    *,
    tokenizer: Any = None,
    init_dir: Path | None = None,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """Write the adapter (and the tokenizer, if given) atomically; `state_dict`: the weights to write instead of
    the model's (a sharded model's, gathered whole).

    With `init_dir` (PiSSA), the adapter is converted against the initial one: PiSSA trains on a
    residual base (W minus its principal components), and the conversion gives a rank-2r LoRA
    that applies to the original, unmodified base.
    """
    with atomic_dir(folder) as tmp:
        if init_dir is not None:
            model.save_pretrained(tmp, path_initial_model_for_weight_conversion=str(init_dir))
        else:
            model.save_pretrained(tmp, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def load_adapter_weights(model: Any, folder: Path) -> None:
    """Put the adapter weights saved in `folder` (safetensors) into the PEFT model."""
    from safetensors.torch import load_file

    load_adapter_state(model, load_file(str(Path(folder) / "adapter_model.safetensors")))


def load_adapter_state(model: Any, state: dict[str, Any]) -> None:
    """Put saved adapter weights into the PEFT model; a sharded model (worker.sharding) takes its chunks."""
    from peft import set_peft_model_state_dict

    from worker.sharding import is_sharded, load_full_adapter

    if is_sharded(model):
        load_full_adapter(model, state)
    else:
        set_peft_model_state_dict(model, state)


def load_checkpoint(ckpt: Checkpoint, *, model: Any, optimizer: Any, scheduler: Any) -> None:
    """Restore adapter weights, optimizer, scheduler and RNG from a checkpoint read by `read_checkpoint`."""
    import torch

    from worker.sharding import is_sharded, shard_optimizer_state

    load_adapter_state(model, ckpt.adapter)
    if is_sharded(model):
        moved = shard_optimizer_state(ckpt.optimizer["state"], [p for g in optimizer.param_groups for p in g["params"]])
    else:
        device = next(p for p in model.parameters() if p.requires_grad).device
        # The step counters stay on the CPU, as the optimizer keeps them.
        moved = {
            idx: {k: v.to(device) if hasattr(v, "to") and k != "step" else v for k, v in st.items()}
            for idx, st in ckpt.optimizer["state"].items()
        }
    optimizer.load_state_dict({"state": moved, "param_groups": ckpt.optimizer["param_groups"]})
    scheduler.load_state_dict(ckpt.scheduler)
    torch.set_rng_state(ckpt.rng["torch"])
    if torch.cuda.is_available():
        cuda_states = [ckpt.rng[k] for k in sorted(ckpt.rng) if k.startswith("cuda")]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    random.setstate(ckpt.python_rng)


def discard_checkpoint(folder: Path) -> None:
    """Remove a checkpoint folder (an unreadable one, so that pruning never keeps it over a good one)."""
    shutil.rmtree(folder, ignore_errors=True)


def prune_checkpoints(root: Path, keep: int = 2) -> None:
    """Keep the newest `keep` checkpoints (the one before the newest is the fallback when the newest
    is unreadable) and clear what interrupted writes left behind."""
    recover_leftovers(root)
    for folder in checkpoint_folders(root)[keep:]:
        shutil.rmtree(folder, ignore_errors=True)
