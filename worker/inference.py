"""Chat inference: each base model loaded once, adapters swapped on it with PEFT.

`ModelPool` keeps loaded bases within a memory budget. Answers from the base go through
`disable_adapter()`, answers from an adapter through `set_adapter(name)`, so N adapters cost one
base plus N small adapters, never N bases.

Memory accounting: a base costs its parameters and buffers at their loaded dtype (sum of
numel x element size, tied weights once), an adapter what loading it added to the model. Before
a load the cost is estimated (a base: its architecture built on the meta device; an adapter: its
safetensors header, at fp32 as PEFT upcasts adapters), and room is made by evicting the least
recently used other bases, then the least recently used adapters of the base in use; the base
in use is never evicted. A base, or a base with one adapter, that cannot fit in the whole budget
is refused with `MemoryBudgetError` rather than loaded: the budget exists to keep the worker
from running out of memory, so going over it silently would defeat it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import struct
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from worker.chat_template import render_chat
from worker.config import GenerationConfig
from worker.modeling import choose_device, load_base_model, load_tokenizer, meta_model

if TYPE_CHECKING:
    import torch
    from transformers import StoppingCriteriaList

log = logging.getLogger(__name__)

TokenCallback = Callable[[str], None]
MIB = 2**20
DEFAULT_MEMORY_BUDGET_MB = 8192
ADAPTER_FILE = "adapter_model.safetensors"
# Bytes per element of safetensors dtypes; floating ones are the ones PEFT upcasts to fp32.
_SAFETENSORS_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_SAFETENSORS_FLOATS = {"F64", "F32", "F16", "BF16"}


class MemoryBudgetError(RuntimeError):
    """A model or adapter cannot fit in the inference memory budget, even alone."""


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def estimate_base_bytes(model_path: str, dtype: torch.dtype | None) -> int:
    """Bytes the base at `model_path` will take once loaded at `dtype` (built on the meta device)."""
    return module_bytes(meta_model(model_path, dtype)[1])


def estimate_adapter_bytes(adapter_dir: str) -> int:
    """Bytes an adapter folder's weights take once loaded (read from the safetensors header only)."""
    path = Path(adapter_dir) / ADAPTER_FILE
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        numel = 1
        for dim in info["shape"]:
            numel *= dim
        total += numel * (4 if info["dtype"] in _SAFETENSORS_FLOATS else _SAFETENSORS_SIZES.get(info["dtype"], 4))
    return total


def _mb(n_bytes: int) -> float:
    return n_bytes / MIB


@dataclass
class LoadedAdapter:
    folder: str
    bytes: int


@dataclass
class LoadedBase:
    path: str
    model: Any  # a transformers model, or a PeftModel while adapters are loaded
    tokenizer: Any
    bytes: int = 0  # the base's own parameters and buffers
    adapters: OrderedDict[str, LoadedAdapter] = field(default_factory=OrderedDict)  # least recently used first

    @property
    def total_bytes(self) -> int:
        return self.bytes + sum(a.bytes for a in self.adapters.values())


class ModelPool:
    """Loaded base models with their adapters within a memory budget; thread-safe, one generation at a time."""

    def __init__(
        self, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB, device: str = "auto", max_adapters_per_base: int = 0
    ):
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
        if max_adapters_per_base < 0:
            raise ValueError(f"max_adapters_per_base must be >= 0 (0: no cap), got {max_adapters_per_base}")
        self.budget_bytes = int(memory_budget_mb * MIB)
        self.max_adapters_per_base = max_adapters_per_base
        self.device = choose_device(device)
        self._bases: OrderedDict[str, LoadedBase] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self.base_loads = 0
        self.adapter_loads = 0
        self.evictions = 0

    @property
    def accounted_bytes(self) -> int:
        return sum(b.total_bytes for b in self._bases.values())

    def stats(self) -> dict[str, Any]:
        """Loaded bases (least recently used first) with their adapters, accounted memory and load counts."""
        with self._lock:
            return {
                "budget_mb": round(_mb(self.budget_bytes), 1),
                "accounted_mb": round(_mb(self.accounted_bytes), 1),
                "base_loads": self.base_loads,
                "adapter_loads": self.adapter_loads,
                "evictions": self.evictions,
                "bases": [
                    {
                        "path": b.path,
                        "mb": round(_mb(b.bytes), 1),
                        "adapters": {name: round(_mb(a.bytes), 2) for name, a in b.adapters.items()},
                    }
                    for b in self._bases.values()
                ],
            }

    def base(self, path: str) -> LoadedBase:
        """The loaded base at `path`, loading it (and evicting others to fit the budget) if needed."""
        with self._lock:
            key = str(Path(path).resolve())
            if key in self._bases:
                self._bases.move_to_end(key)
                return self._bases[key]
            need = estimate_base_bytes(key, self.device.dtype)
            if need > self.budget_bytes:
                raise self._too_big(f"base model {key}", need)
            self._make_room(need)
            model = load_base_model(key, self.device)
            model.eval()
            model.config.use_cache = True
            self.base_loads += 1
            loaded = LoadedBase(key, model, load_tokenizer(key), bytes=module_bytes(model))
            if loaded.bytes > self.budget_bytes:
                raise self._too_big(f"base model {key}", loaded.bytes)
            self._bases[key] = loaded
            self._make_room(0, keep=loaded)  # the estimate may have been low
            log.info(
                "loaded base model %s (%.0f MB; pool %.0f of %.0f MB)",
                key,
                _mb(loaded.bytes),
                _mb(self.accounted_bytes),
                _mb(self.budget_bytes),
            )
            return loaded

    def _too_big(self, what: str, n_bytes: int) -> MemoryBudgetError:
        return MemoryBudgetError(
            f"{what} needs about {_mb(n_bytes):.0f} MB, more than the whole inference memory budget of "
            f"{_mb(self.budget_bytes):.0f} MB (memory_budget_mb, INFER_MEMORY_BUDGET_MB in the app); "
            f"raise the budget or use a smaller model"
        )

    def _make_room(self, need: int, keep: LoadedBase | None = None, protect: str | None = None) -> None:
        """Evict LRU bases other than `keep`, then `keep`'s LRU adapters (not `protect`), until `need` fits."""
        while self.accounted_bytes + need > self.budget_bytes:
            victim = next((b for b in self._bases.values() if b is not keep), None)
            if victim is not None:
                self._evict_base(victim)
                continue
            spare = [name for name in keep.adapters if name != protect] if keep is not None else []
            if not spare:
                what = f"base model {keep.path} with adapter {protect}" if keep is not None else "the new model"
                raise self._too_big(what, self.accounted_bytes + need)
            assert keep is not None  # spare is empty without it
            self._delete_adapter(keep, spare[0])

    def _evict_base(self, loaded: LoadedBase) -> None:
        del self._bases[loaded.path]
        loaded.model = None
        loaded.adapters.clear()
        self.evictions += 1
        log.info(
            "evicted base model %s (%.0f MB) to stay within %.0f MB",
            loaded.path,
            _mb(loaded.bytes),
            _mb(self.budget_bytes),
        )
        self._release_memory()

    def _delete_adapter(self, loaded: LoadedBase, name: str) -> None:
        adapter = loaded.adapters.pop(name)
        if loaded.adapters:
            with warnings.catch_warnings():  # "adapter X was active ... setting active adapter to Y": set below
                warnings.simplefilter("ignore")
                loaded.model.delete_adapter(name)
        else:  # the last one: take the LoRA layers out again, back to the plain base
            loaded.model = loaded.model.unload()
        self.evictions += 1
        log.info("evicted adapter %s (%.1f MB) from %s", name, _mb(adapter.bytes), loaded.path)
        self._release_memory()

    def _release_memory(self) -> None:
        gc.collect()
        if self.device.is_cuda:
            import torch

            torch.cuda.empty_cache()

    def _activate(self, loaded: LoadedBase, adapter_name: str, adapter_dir: str) -> None:
        from peft import PeftModel

        if adapter_name in loaded.adapters:
            loaded.adapters.move_to_end(adapter_name)
        else:
            if self.max_adapters_per_base and len(loaded.adapters) >= self.max_adapters_per_base:
                self._delete_adapter(loaded, next(iter(loaded.adapters)))
            need = estimate_adapter_bytes(adapter_dir)
            if loaded.bytes + need > self.budget_bytes:
                raise self._too_big(f"base model {loaded.path} with adapter {adapter_name}", loaded.bytes + need)
            self._make_room(need, keep=loaded)
            before = module_bytes(loaded.model)
            if not loaded.adapters:
                loaded.model = PeftModel.from_pretrained(
                    loaded.model, adapter_dir, adapter_name=adapter_name, is_trainable=False
                )
            else:
                loaded.model.load_adapter(adapter_dir, adapter_name=adapter_name, is_trainable=False)
            self.adapter_loads += 1
            loaded.adapters[adapter_name] = LoadedAdapter(adapter_dir, module_bytes(loaded.model) - before)
            self._make_room(0, keep=loaded, protect=adapter_name)  # the estimate may have been low
        loaded.model.set_adapter(adapter_name)

    def _select(
        self, base_path: str, adapter: tuple[str, str] | None
    ) -> tuple[LoadedBase, contextlib.AbstractContextManager[Any]]:
        """The loaded base with `adapter` (name, folder) active, and the context to answer in:
        `disable_adapter()` for a base answer while adapters are loaded."""
        loaded = self.base(base_path)
        if adapter is not None:
            self._activate(loaded, *adapter)
            return loaded, contextlib.nullcontext()
        return loaded, loaded.model.disable_adapter() if loaded.adapters else contextlib.nullcontext()

    def load(self, base_path: str, adapter: tuple[str, str] | None = None) -> None:
        """Load the base (and adapter (name, folder)) now, before the first answer asks for it."""
        with self._lock:
            self._select(base_path, adapter)

    def generate(
        self,
        base_path: str,
        messages: list[dict[str, str]],
        gen: GenerationConfig,
        adapter: tuple[str, str] | None = None,
        on_text: TokenCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> str:
        """Answer `messages` with the base (adapter=None) or with adapter (name, folder).

        `should_stop` is asked after every new token; once it says True, generation ends there and
        the text so far is the answer (the stop button).
        """
        import torch

        with self._lock:
            loaded, ctx = self._select(base_path, adapter)
            tok = loaded.tokenizer
            enc = tok(_prompt_text(tok, messages, gen), return_tensors="pt", add_special_tokens=False).to(
                self.device.device
            )
            streamer = _BatchStreamer(tok, 1, lambda row, piece: on_text(piece)) if on_text else None
            torch.manual_seed(gen.seed)
            with ctx, torch.inference_mode():
                out = loaded.model.generate(**enc, streamer=streamer, **_generate_kwargs(tok, gen, should_stop))
            answer: str = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            return answer

    def generate_many(
        self,
        base_path: str,
        requests: list[tuple[list[dict[str, str]], tuple[str, str] | None]],
        gen: GenerationConfig,
        on_text: Callable[[int, str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[str]:
        """Answer several (messages, adapter) requests on one base in ONE batched generate call.

        Each row of the batch runs through its own adapter (PEFT mixed-adapter batches; "__base__"
        for the base alone), so every side of a comparison streams at the same time: `on_text(i,
        piece)` receives row i's text as it is generated. Falls back to one row after the other
        where PEFT cannot mix (DoRA adapters) or the adapters do not fit in the budget together.
        """
        import torch

        with self._lock:
            loaded = self.base(base_path)
            names: list[str] = []
            for _, adapter in requests:
                if adapter is not None:
                    self._activate(loaded, *adapter)
                names.append(adapter[0] if adapter is not None else "__base__")
            if not self._can_mix(loaded, names):
                return [
                    self.generate(
                        base_path,
                        messages,
                        gen,
                        adapter,
                        functools.partial(on_text, i) if on_text else None,
                        should_stop,
                    )
                    for i, (messages, adapter) in enumerate(requests)
                ]
            tok = loaded.tokenizer
            enc = tok(
                [_prompt_text(tok, messages, gen) for messages, _ in requests],
                return_tensors="pt",
                padding=True,
                padding_side="left",
                add_special_tokens=False,
            ).to(self.device.device)
            kwargs = _generate_kwargs(tok, gen, should_stop)
            if loaded.adapters:
                kwargs["adapter_names"] = names
            streamer = _BatchStreamer(tok, len(requests), on_text) if on_text else None
            torch.manual_seed(gen.seed)
            with torch.inference_mode():
                out = loaded.model.generate(**enc, streamer=streamer, **kwargs)
            width = enc["input_ids"].shape[1]
            return [tok.decode(row[width:], skip_special_tokens=True) for row in out]

    def _can_mix(self, loaded: LoadedBase, names: list[str]) -> bool:
        """All adapters still loaded (the budget may have evicted one) and none uses DoRA."""
        wanted = {n for n in names if n != "__base__"}
        if not wanted <= set(loaded.adapters):
            return False
        return not any(getattr(loaded.model.peft_config[n], "use_dora", False) for n in wanted)

    def logits(self, base_path: str, input_ids: torch.Tensor, adapter: tuple[str, str] | None = None) -> torch.Tensor:
        """Next-token logits for input_ids from the base or an adapter (used by tests and eval)."""
        import torch

        with self._lock:
            loaded, ctx = self._select(base_path, adapter)
            with ctx, torch.inference_mode():
                logits: torch.Tensor = loaded.model(input_ids=input_ids.to(self.device.device)).logits.float().cpu()
                return logits


def _prompt_text(tok: Any, messages: list[dict[str, str]], gen: GenerationConfig) -> str:
    """The conversation through the model's chat template, with the system prompt first if one is set."""
    chat = list(messages)
    if gen.system_prompt and not (chat and chat[0]["role"] == "system"):
        chat = [{"role": "system", "content": gen.system_prompt}] + chat
    return render_chat(tok, chat, add_generation_prompt=True)


def _generate_kwargs(tok: Any, gen: GenerationConfig, should_stop: Callable[[], bool] | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        max_new_tokens=gen.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )
    if gen.temperature > 0:
        kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if should_stop is not None:
        kwargs["stopping_criteria"] = _stop_criteria(should_stop)
    return kwargs


class _BatchStreamer:
    """Streams each row of a (batched) generate as text; transformers' TextStreamer takes one row only.

    A row's text is re-decoded from its tokens each step and only the new, complete part is sent
    (a trailing U+FFFD means a multi-byte character is not finished yet). A row ends at EOS.
    """

    def __init__(self, tokenizer: Any, rows: int, on_text: Callable[[int, str], None]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [0] * rows
        self.ended = [False] * rows
        self.prompt_seen = False
        eos = tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.tokens), -1)[:, -1].tolist()):
            if self.ended[row]:
                continue
            if token in self.eos:
                self.ended[row] = True
                continue
            self.tokens[row].append(token)
            self._send(row, final=False)

    def end(self) -> None:
        for row in range(len(self.tokens)):
            self._send(row, final=True)

    def _send(self, row: int, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        piece = text[self.sent[row] :]
        if piece:
            self.sent[row] = len(text)
            self.on_text(row, piece)


def _stop_criteria(should_stop: Callable[[], bool]) -> StoppingCriteriaList:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            import torch

            done = torch.full((input_ids.shape[0],), bool(should_stop()), dtype=torch.bool, device=input_ids.device)
            return cast("torch.BoolTensor", done)

    return StoppingCriteriaList([StopWhenAsked()])


@dataclass
class FittedConversation:
    """A conversation cut to fit the model's context, and what was left out."""

    messages: list[dict[str, str]]
    dropped_messages: int = 0
    cut_chars: int = 0

    def note(self, context: int) -> str:
        """What the answer's reader is told, or "" when nothing was left out."""
        parts: list[str] = []
        if self.dropped_messages:
            parts.append(f"the {self.dropped_messages} oldest message(s) were left out")
        if self.cut_chars:
            parts.append(f"the start of the last message ({self.cut_chars:,} characters) was cut")
        return (f"To fit the model's context of {context:,} tokens, " + " and ".join(parts) + ".") if parts else ""


def fit_conversation(
    tok: Any, messages: list[dict[str, str]], gen: GenerationConfig, context: int
) -> FittedConversation:
    """Drop the oldest turns (never the system prompt or the last message), then cut the last message
    from the left, until the prompt leaves room for `gen.max_new_tokens` in `context` tokens."""
    budget = max(16, context - gen.max_new_tokens)

    def tokens(chat: list[dict[str, str]]) -> int:
        return len(tok(_prompt_text(tok, chat, gen), add_special_tokens=False)["input_ids"])

    head = [m for m in messages[:1] if m["role"] == "system"]
    body = messages[len(head) :]
    dropped = 0
    while len(body) > 1 and tokens(head + body) > budget:
        body = body[1:]
        dropped += 1
    if body and body[0]["role"] == "assistant" and len(body) > 1:  # a conversation resumes with the user
        body, dropped = body[1:], dropped + 1
    last, text = dict(body[-1]), body[-1]["content"]
    if tokens(head + body[:-1] + [last]) > budget:
        keep_lo, keep_hi = 0, len(text)  # the longest end of the message that fits (binary search)
        while keep_lo < keep_hi:
            mid = (keep_lo + keep_hi + 1) // 2
            if tokens(head + body[:-1] + [{**last, "content": text[-mid:]}]) <= budget:
                keep_lo = mid
            else:
                keep_hi = mid - 1
        last["content"] = text[len(text) - keep_lo :]
    return FittedConversation(head + body[:-1] + [last], dropped, len(text) - len(last["content"]))
