"""How to serve a trained adapter elsewhere, as copy-pasteable commands: vLLM (many adapters on one base), this
product's own OpenAI-compatible `/v1/chat/completions`, PEFT in Python, llama.cpp and Ollama (from the GGUF LoRA
export). The job page shows them and the adapter zip's model card carries them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

VLLM_DEFAULT_MAX_RANK = 16  # vLLM refuses a LoRA of a higher rank unless --max-lora-rank says so


@dataclass(frozen=True)
class Recipe:
    """One way to run the adapter: a title, a line of context, the code and its language (for the card's fence)."""

    key: str
    title: str
    note: str
    code: str
    language: str = "bash"


def serving_name(job_name: str, short_id: str) -> str:
    """A model name every server accepts (lower-case letters, digits, - and _): the job's name or lora-<id>."""
    name = re.sub(r"[^a-z0-9_-]+", "-", job_name.lower()).strip("-")[:40]
    return name or f"lora-{short_id}"


def serving_recipes(
    *, base_model: str, name: str, rank: int, api_model: str | None, api_base: str, adapter_path: str = "./adapter"
) -> list[Recipe]:
    """The recipes for an adapter `name` on `base_model` (a Hub id or the base's folder); `api_model` is its `ft:`
    id on this product (None: no API recipe), `api_base` this product's /v1 address."""
    rank_flag = f" --max-lora-rank {rank}" if rank > VLLM_DEFAULT_MAX_RANK else ""
    hello = [{"role": "user", "content": "Hello"}]
    vllm_body = json.dumps({"model": name, "messages": hello})
    recipes = [
        Recipe(
            "vllm",
            "vLLM",
            f"Serve the base with this adapter (unzipped into {adapter_path}) over vLLM's OpenAI-compatible API; "
            "add more name=path pairs to serve several adapters on one base.",
            f"vllm serve {base_model} --enable-lora{rank_flag} --lora-modules {name}={adapter_path}\n\n"
            "curl http://localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n"
            f"  -d '{vllm_body}'",
        )
    ]
    if api_model:
        body = json.dumps({"model": api_model, "messages": hello})
        recipes.append(
            Recipe(
                "api",
                "This product's API",
                "The same adapter, served here: a key from the API keys page in LORA_STUDIO_KEY.",
                f"curl {api_base.rstrip('/')}/chat/completions \\\n"
                '  -H "Authorization: Bearer $LORA_STUDIO_KEY" -H "Content-Type: application/json" \\\n'
                f"  -d '{body}'",
            )
        )
    recipes += [
        Recipe(
            "peft",
            "PEFT (Python)",
            f"Load the base and the adapter (unzipped into {adapter_path}) with transformers and PEFT.",
            "from peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base_model}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{adapter_path}")\n'
            f'model = PeftModel.from_pretrained(base, "{adapter_path}")\n'
            f"messages = {json.dumps(hello)}\n"
            'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
            "return_dict=True)\n"
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))",
            "python",
        ),
        Recipe(
            "llama-cpp",
            "llama.cpp",
            "From the GGUF LoRA export's zip (model.gguf is the base, adapter.gguf the LoRA): a chat in the terminal, "
            "or an OpenAI-compatible server on port 8080.",
            "llama-cli -m model.gguf --lora adapter.gguf -cnv\n"
            "llama-server -m model.gguf --lora adapter.gguf --port 8080",
        ),
        Recipe(
            "ollama",
            "Ollama",
            "In the folder where the GGUF export's zip was unpacked (it holds the Modelfile).",
            f"ollama create {name} -f Modelfile\nollama run {name}",
        ),
    ]
    return recipes


def recipes_markdown(recipes: list[Recipe]) -> str:
    """The recipes as a model card section."""
    parts = ["## Serving it\n"]
    for r in recipes:
        parts.append(f"### {r.title}\n\n{r.note}\n\n```{r.language}\n{r.code}\n```\n")
    return "\n".join(parts)
