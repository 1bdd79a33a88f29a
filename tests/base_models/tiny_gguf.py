"""Write the tiny Llama of tests/tiny_model.py as a GGUF file (float32 tensors, its byte-level BPE tokenizer and
chat template), the way llama.cpp's convert_hf_to_gguf.py lays one out, so a GGUF upload is tested end to end
in a second instead of with the 100 MB demo file."""

from __future__ import annotations

import json
from pathlib import Path


def _permute(weight, n_head: int, n_head_kv: int):
    """llama.cpp's row order for q_proj / k_proj (transformers reverses it when it reads a GGUF)."""
    heads = n_head_kv if n_head_kv != n_head else n_head
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def write_tiny_gguf(model_dir: Path, out: Path) -> Path:
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    vocab = tokenizer["model"]["vocab"]
    for added in tokenizer["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = {a["content"] for a in tokenizer["added_tokens"] if a["special"]}

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control, 1: normal
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_chat_template((model_dir / "chat_template.jinja").read_text())

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        if name in names:
            target = names[name]
        else:
            _, _, layer, rest = name.split(".", 3)  # model.layers.N.<module>.weight
            module = rest.rsplit(".", 1)[0]
            target = f"blk.{layer}.{per_layer[module]}.weight"
            if module == "self_attn.q_proj":
                tensor = _permute(tensor, heads, heads)
            elif module == "self_attn.k_proj":
                tensor = _permute(tensor, heads, kv_heads)
        writer.add_tensor(target, tensor.astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def write_lying_gguf(out: Path, parameters_per_tensor: int = 103_000_000_000, tensors: int = 5) -> Path:
    """A GGUF whose header declares float32 tensors of `parameters_per_tensor` each, with no weights after it."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("huge")
    writer.add_block_count(tensors)
    rows = 100_000
    for i in range(tensors):
        shape = (rows, parameters_per_tensor // rows)
        writer.add_tensor_info(
            f"blk.{i}.ffn_up.weight",
            shape,
            np.dtype(np.float32),
            parameters_per_tensor * 4,
            gguf.GGMLQuantizationType.F32,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return out
