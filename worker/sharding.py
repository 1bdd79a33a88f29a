"""FSDP: the frozen base sharded across the ranks of one job (`sharding = "fsdp"`), with FSDP2's `fully_shard`.

Each decoder layer is one FSDP unit and the causal LM the root unit (embeddings, final norm, LM head), applied
after PEFT wrapping, so a unit holds frozen base weights and LoRA weights together. Every parameter becomes a
DTensor sharded on dim 0: each rank keeps 1/N of the base (and of the adapter and its optimizer state), and a
unit is all-gathered just before its forward and backward and freed after. FSDP reduce-scatters the gradients
with a divide factor of 1, so they are summed as `RankGroup.sum_grads` sums them for plain data parallel: the
engine's loss (a rank's summed token loss over the trained tokens of the whole global step) keeps its meaning.

FSDP runs collectives inside every forward, so all ranks must run the same number of forwards; `worker.devices.Fsdp`
gives a rank with no example in a micro-batch (or a short eval share) a stand-in batch whose loss is not counted.

Files stay in the one-device format: rank 0 writes a full adapter and full optimizer state gathered from the
shards (`full_tensor()` is a collective, so every rank takes part in each save), and loading puts each rank's
chunk of the full tensors back into its shards (no collective: every rank reads the same files).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BaseShare:
    """How much of the frozen base this rank stores after sharding, and the whole base's size (bytes)."""

    local_bytes: int
    total_bytes: int


def decoder_layers(causal: Any) -> list[Any]:
    """The repeated transformer blocks of a causal LM (the FSDP units), by HF's `_no_split_modules` names."""
    names = set(getattr(causal, "_no_split_modules", None) or ())
    layers = [m for m in causal.modules() if type(m).__name__ in names]
    if not layers:
        from worker.config import ConfigError

        raise ConfigError(
            "sharding", f"FSDP cannot find the decoder layers of {type(causal).__name__}; set sharding to none"
        )
    return layers


def check_trained_dtypes(units: list[Any]) -> None:
    """ConfigError when one unit trains weights of several dtypes: FSDP reduce-scatters a unit's gradients as one
    tensor. On a GPU PEFT keeps LoRA weights in fp32 while trained biases keep the base's bf16."""
    from worker.config import ConfigError

    owned: set[int] = set()
    for unit in units:  # the layers first, the root last: the root's own weights are those no layer holds
        params = [p for p in unit.parameters() if id(p) not in owned]
        owned.update(id(p) for p in params)
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params if p.requires_grad})
        if len(dtypes) > 1:
            raise ConfigError(
                "sharding",
                f"fsdp needs one dtype for the trained weights of each layer and "
                f"{type(unit).__name__} trains {' and '.join(dtypes)} ones (trained "
                "biases keep the base's dtype); set bias to none or sharding to none",
            )


def shard_model(peft_model: Any, device: Any) -> BaseShare:
    """Shard `peft_model` in place across the process group (each decoder layer, then the root) on `device`."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    causal = peft_model.get_base_model()
    total = sum(p.numel() * p.element_size() for p in peft_model.parameters() if not p.requires_grad)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    units = decoder_layers(causal) + [causal]
    check_trained_dtypes(units)
    for unit in units:
        fully_shard(unit, mesh=mesh)
    for unit in units:  # each unit reduces its own gradients
        # Sum, not average, over ranks: the loss is already normalised by the tokens of the whole global step.
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no pre-multiplied sum
    local = sum(local_of(p).numel() * p.element_size() for p in peft_model.parameters() if not p.requires_grad)
    return BaseShare(local, total)


def is_sharded(model: Any) -> bool:
    """True when `model` (a PEFT model or the causal LM under it) was sharded by `shard_model`."""
    from torch.distributed.fsdp import FSDPModule

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    return isinstance(causal, FSDPModule)


def is_dtensor(value: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def local_of(tensor: Any) -> Any:
    """This rank's shard of a DTensor; a plain tensor as it is."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def full_of(tensor: Any) -> Any:
    """The whole tensor on the CPU, gathered from every rank's shard (a collective: all ranks call it in step)."""
    full = tensor.full_tensor() if is_dtensor(tensor) else tensor
    return full.detach().cpu().contiguous()


def like(full: Any, param: Any) -> Any:
    """`full` (on every rank) as a tensor shaped like `param`: this rank's chunk of it as a DTensor when `param`
    is one (no communication: every rank holds the same full tensor)."""
    from torch.distributed.tensor import distribute_tensor

    if not is_dtensor(param):
        return full.to(param.device)
    return distribute_tensor(
        full.to(param.device_mesh.device_type), param.device_mesh, param.placements, src_data_rank=None
    )


def trainable_named(model: Any) -> list[tuple[str, Any]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def full_adapter_state(model: Any) -> dict[str, Any]:
    """The trainable weights gathered whole, under the model's own names (what `save_pretrained(state_dict=)`
    takes); every rank must call it, in step."""
    return {name: full_of(p) for name, p in trainable_named(model)}


def adapter_key_map(model: Any) -> dict[str, str]:
    """Saved adapter key (as in adapter_model.safetensors) -> the model's parameter name, as PEFT renames them."""
    import torch
    from peft import get_peft_model_state_dict

    named = trainable_named(model)
    markers = {name: torch.tensor(i) for i, (name, _) in enumerate(named)}
    saved = get_peft_model_state_dict(model, state_dict=markers)
    return {key: named[int(marker)][0] for key, marker in saved.items()}


def load_full_adapter(model: Any, state: dict[str, Any]) -> None:
    """Put a full adapter (saved keys, as `load_file` reads them) into a sharded model: each rank takes its chunks."""
    import torch

    keys = adapter_key_map(model)
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(keys))
    if unknown:
        raise KeyError(f"adapter weights not in this model: {unknown[:3]}")
    with torch.no_grad():
        for key, tensor in state.items():
            param = params[keys[key]]
            local_of(param).copy_(local_of(like(tensor.to(param.dtype), param)))


def full_optimizer_state(optimizer: Any) -> dict[str, Any]:
    """`optimizer.state_dict()` with every sharded state tensor gathered whole (a collective, in a fixed order)."""
    sd = optimizer.state_dict()
    state = {
        idx: {key: full_of(value) if is_dtensor(value) else value for key, value in sorted(st.items())}
        for idx, st in sorted(sd["state"].items())
    }
    return {"state": state, "param_groups": sd["param_groups"]}


def shard_optimizer_state(state: dict[int, dict[str, Any]], params: list[Any]) -> dict[int, dict[str, Any]]:
    """Full optimizer state (per parameter index) as each sharded parameter's share; `step` stays as it is."""
    return {
        idx: {
            key: like(value, params[idx]) if key != "step" and hasattr(value, "to") else value
            for key, value in st.items()
        }
        for idx, st in state.items()
    }
