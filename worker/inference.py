"""Chat inference: each base model loaded once, adapters swapped on it with PEFT.

`ModelPool` keeps loaded bases (least recently used evicted past `max_bases`). Answers from the
base go through `disable_adapter()`, answers from an adapter through `set_adapter(name)`, so N
adapters cost one base plus N small adapters.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from worker.config import GenerationConfig
from worker.modeling import choose_device, load_base_model, load_tokenizer

log = logging.getLogger(__name__)

TokenCallback = Callable[[str], None]


@dataclass
class LoadedBase:
    path: str
    model: object  # a transformers model, or a PeftModel once an adapter is loaded
    tokenizer: object
    adapters: dict[str, str] = field(default_factory=dict)  # adapter name -> folder
    base_loads: int = 1


class ModelPool:
    """Loaded base models with their adapters; thread-safe, one generation at a time."""

    def __init__(self, max_bases: int = 1, device: str = "auto"):
        self.max_bases = max_bases
        self.device = choose_device(device)
        self._bases: "OrderedDict[str, LoadedBase]" = OrderedDict()
        self._lock = threading.RLock()
        self.base_loads = 0

    def base(self, path: str) -> LoadedBase:
        with self._lock:
            key = str(Path(path).resolve())
            if key in self._bases:
                self._bases.move_to_end(key)
                return self._bases[key]
            while len(self._bases) >= self.max_bases:
                evicted, _ = self._bases.popitem(last=False)
                log.info("evicted base model %s", evicted)
            model = load_base_model(key, self.device)
            model.eval()
            model.config.use_cache = True
            self.base_loads += 1
            loaded = LoadedBase(key, model, load_tokenizer(key))
            self._bases[key] = loaded
            return loaded

    def _activate(self, loaded: LoadedBase, adapter_name: str, adapter_dir: str) -> None:
        from peft import PeftModel

        if adapter_name not in loaded.adapters:
            if not loaded.adapters:
                loaded.model = PeftModel.from_pretrained(loaded.model, adapter_dir, adapter_name=adapter_name,
                                                         is_trainable=False)
            else:
                loaded.model.load_adapter(adapter_dir, adapter_name=adapter_name, is_trainable=False)
            loaded.adapters[adapter_name] = adapter_dir
        loaded.model.set_adapter(adapter_name)

    def generate(self, base_path: str, messages: list[dict[str, str]], gen: GenerationConfig,
                 adapter: Optional[tuple[str, str]] = None, on_text: TokenCallback | None = None) -> str:
        """Answer `messages` with the base (adapter=None) or with adapter (name, folder)."""
        import contextlib

        import torch

        with self._lock:
            loaded = self.base(base_path)
            if adapter is not None:
                self._activate(loaded, *adapter)
                ctx = contextlib.nullcontext()
            elif loaded.adapters:
                ctx = loaded.model.disable_adapter()
            else:
                ctx = contextlib.nullcontext()
            chat = list(messages)
            if gen.system_prompt and not (chat and chat[0]["role"] == "system"):
                chat = [{"role": "system", "content": gen.system_prompt}] + chat
            tok = loaded.tokenizer
            text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            enc = tok(text, return_tensors="pt", add_special_tokens=False).to(self.device.device)
            torch.manual_seed(gen.seed)
            kwargs = dict(max_new_tokens=gen.max_new_tokens, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id)
            if gen.temperature > 0:
                kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            streamer = _CallbackStreamer(tok, on_text) if on_text else None
            with ctx, torch.inference_mode():
                out = loaded.model.generate(**enc, streamer=streamer, **kwargs)
            return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def logits(self, base_path: str, input_ids, adapter: Optional[tuple[str, str]] = None):
        """Next-token logits for input_ids from the base or an adapter (used by tests and eval)."""
        import contextlib

        import torch

        with self._lock:
            loaded = self.base(base_path)
            if adapter is not None:
                self._activate(loaded, *adapter)
                ctx = contextlib.nullcontext()
            else:
                ctx = loaded.model.disable_adapter() if loaded.adapters else contextlib.nullcontext()
            with ctx, torch.inference_mode():
                return loaded.model(input_ids=input_ids.to(self.device.device)).logits.float().cpu()


def _CallbackStreamer(tokenizer, on_text: TokenCallback):
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
