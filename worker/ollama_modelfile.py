"""The Ollama `Modelfile` that goes beside exported GGUF files: `FROM` the model, `ADAPTER` the LoRA GGUF,
`TEMPLATE` (Go template syntax) translated from the Hugging Face chat template, and `PARAMETER stop` for the
turn's end tokens.

Chat templates are Jinja programs; this translates the two families small open models use: ChatML
(`<|im_start|>role ... <|im_end|>`, SmolLM2, Qwen) and Llama 3's header tokens. The translations are the
templates Ollama itself ships for them. A template of another family gets no `TEMPLATE` line and a note: Ollama
then picks a template from the GGUF's `tokenizer.chat_template` itself, which the export always carries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class OllamaChat:
    """A chat format in Ollama's terms: its Go template, stop strings, a default system prompt, or a note."""

    family: str
    template: str
    stops: tuple[str, ...]
    system: str = ""
    note: str = ""


CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
LLAMA3_TEMPLATE = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>\n"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
UNKNOWN_NOTE = (
    "the chat template is not one this product translates (ChatML or Llama 3); no TEMPLATE is written, so Ollama "
    "chooses one from the chat template inside the GGUF file; check the answers' format"
)
# A default system prompt written as a literal in a ChatML template (SmolLM2's "You are a helpful AI assistant ...").
_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\\n|\n)(.+?)<\|im_end\|>", re.DOTALL)


def ollama_chat(chat_template: str | None, eos_token: str | None = None) -> OllamaChat:
    """The Ollama form of a Hugging Face chat template (`eos_token` is the stop for an unknown one)."""
    template = chat_template or ""
    if "<|im_start|>" in template and "<|im_end|>" in template:
        match = _CHATML_DEFAULT_SYSTEM.search(template)
        system = match.group(1).replace("\\n", "\n") if match else ""
        return OllamaChat("chatml", CHATML_TEMPLATE, ("<|im_start|>", "<|im_end|>"), system=system)
    if "<|start_header_id|>" in template and "<|eot_id|>" in template:
        return OllamaChat("llama3", LLAMA3_TEMPLATE, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    note = UNKNOWN_NOTE if template else "the model has no chat template; Ollama will send prompts as they are"
    return OllamaChat("unknown", "", (eos_token,) if eos_token else (), note=note)


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError('a Modelfile value cannot contain """')
    return f'"""{text}"""'


def modelfile_text(
    *, model_file: str, adapter_file: str | None = None, chat_template: str | None, eos_token: str | None = None
) -> str:
    """An Ollama Modelfile for `model_file` (a GGUF beside it) with the LoRA GGUF `adapter_file`, if any."""
    chat = ollama_chat(chat_template, eos_token)
    lines = ["# Ollama Modelfile written by LoRA Studio.", "#   ollama create my-model -f Modelfile"]
    lines += ["#   ollama run my-model", f"FROM ./{model_file}"]
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
    if chat.note:
        lines.append(f"# Note: {chat.note}.")
    if chat.template:
        lines.append(f"TEMPLATE {_quoted(chat.template)}")
    if chat.system:
        lines.append(f"SYSTEM {_quoted(chat.system)}")
    lines += [f'PARAMETER stop "{stop}"' for stop in chat.stops]
    return "\n".join(lines) + "\n"
