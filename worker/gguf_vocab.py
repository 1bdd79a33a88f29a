"""A Hugging Face BPE tokenizer as GGUF metadata, the way llama.cpp's convert_hf_to_gguf.py writes it.

`tokenizer.ggml.model` "gpt2" (byte-level BPE), the token strings and their types (normal, control for special
added tokens, user-defined for other added tokens, unused for ids the tokenizer does not fill), the merges, the
bos/eos/unk/pad ids, the add-bos flag and the chat template (the last four through the `gguf` package's own
`SpecialVocab`). `tokenizer.ggml.pre` names llama.cpp's pre-tokenizer: found, as llama.cpp finds it, by hashing
the tokens of one check text; a tokenizer llama.cpp does not list gets "gpt-2" when it splits text as GPT-2 does
(a plain ByteLevel pre-tokenizer) and llama.cpp's "default" otherwise, with a note in the export's result.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from worker.errors import InputError

log = logging.getLogger(__name__)

# llama.cpp's check text (convert_hf_to_gguf.py, get_vocab_base_pre): its tokens' hash names the pre-tokenizer.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 "
    "333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= "
    "нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
# The hashes of the byte-level BPE tokenizers of Llama-architecture models this product is likely to meet
# (from llama.cpp's table).
KNOWN_PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
}
# gguf.TokenType values
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass(frozen=True)
class GgufVocab:
    """What a tokenizer becomes in a GGUF, and the note to show when llama.cpp may split text differently."""

    tokens: list[str]
    token_types: list[int]
    pre: str
    adds: dict[str, bool]  # whether encoding puts the bos / eos token around a text
    add_prefix_space: bool | None
    note: str = ""


def _tokenizer_json(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise InputError(
            "tokenizer",
            "the model has no tokenizer.json (a fast tokenizer); only byte-level BPE tokenizers can be exported "
            "to GGUF here",
        )
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _is_byte_level(pre_tokenizer: dict[str, Any] | None) -> bool:
    if not pre_tokenizer:
        return False
    if pre_tokenizer.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(p) for p in pre_tokenizer.get("pretokenizers") or [])


def pre_tokenizer_name(tokenizer: Any, tokenizer_json: dict[str, Any]) -> tuple[str, str]:
    """llama.cpp's name for this tokenizer's pre-tokenizer, and a note when it is a guess (else "")."""
    digest = sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    if digest in KNOWN_PRE_TOKENIZERS:
        return KNOWN_PRE_TOKENIZERS[digest], ""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2", ""
    note = (
        "llama.cpp does not know this tokenizer's way of splitting text before BPE; the GGUF names its "
        "'default' one, so llama.cpp may tokenize some texts differently from Hugging Face"
    )
    log.warning("unknown BPE pre-tokenizer (hash %s): %s", digest, note)
    return "default", note


def _token_strings(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Each id's token text and type, as llama.cpp's get_vocab_base lists them."""
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        if token in added:
            if not decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            looks_special = token.startswith("<|") and token.endswith("|>")
            types.append(CONTROL if decoder[i].special or looks_special else USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(token)
    return tokens, types


def read_vocab(model_dir: str | Path, vocab_size: int) -> GgufVocab:
    """The tokenizer in `model_dir` as GGUF tokens; InputError in plain words when it is not byte-level BPE."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    data = _tokenizer_json(model_dir)
    if (data.get("model") or {}).get("type") != "BPE" or not _is_byte_level(data.get("pre_tokenizer")):
        raise InputError(
            "tokenizer",
            "the model's tokenizer is not a byte-level BPE one (like GPT-2's or Llama 3's); a SentencePiece "
            "tokenizer cannot be exported to GGUF here yet",
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if max(tokenizer.get_vocab().values()) >= vocab_size:
        raise InputError("tokenizer", "the tokenizer has more tokens than the model's vocab_size")
    tokens, types = _token_strings(tokenizer, vocab_size)
    pre, note = pre_tokenizer_name(tokenizer, data)
    ids = tokenizer("a").input_ids
    adds = {
        "bos": tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id],
        "eos": tokenizer.eos_token_id is not None and ids[-1:] == [tokenizer.eos_token_id],
    }
    return GgufVocab(tokens, types, pre, adds, _add_prefix_space(model_dir, data), note)


def _add_prefix_space(model_dir: Path, tokenizer_json: dict[str, Any]) -> bool | None:
    """tokenizer_config.json's add_prefix_space (what convert_hf_to_gguf reads), else the ByteLevel
    pre-tokenizer's."""
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if config.get("add_prefix_space") is not None:
        return bool(config["add_prefix_space"])
    pre = tokenizer_json.get("pre_tokenizer") or {}
    for part in [pre, *(pre.get("pretokenizers") or [])]:
        if part.get("type") == "ByteLevel" and part.get("add_prefix_space") is not None:
            return bool(part["add_prefix_space"])
    return None


def add_vocab(writer: Any, model_dir: str | Path, vocab_size: int) -> GgufVocab:
    """Write the tokenizer metadata (tokenizer.ggml.* and tokenizer.chat_template) of `model_dir`."""
    import gguf

    model_dir = Path(model_dir)
    vocab = read_vocab(model_dir, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.add_prefix_space is not None:
        writer.add_add_space_prefix(vocab.add_prefix_space)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(vocab.tokens))
    for kind, adds in vocab.adds.items():  # what the tokenizer does, where its config files do not say
        if kind == "bos" or adds:
            special.add_special_token.setdefault(kind, adds)
    special.add_to_gguf(writer, quiet=True)
    return vocab


def chat_template_of(model_dir: str | Path) -> str | None:
    """The model's chat template (tokenizer_config.json or chat_template.jinja), as the GGUF will carry it."""
    import gguf

    template = gguf.SpecialVocab(Path(model_dir)).chat_template
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None
