"""GGUF export read back with the `gguf` package's own reader: the LoRA file against the adapter's safetensors,
the base GGUF against the Hugging Face weights (llama.cpp's q/k permutation undone), q8_0 within its rounding,
a round trip HF -> GGUF -> HF (the project's own GGUF reader) with identical logits, and the Ollama Modelfile."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.tiny_model import CHATML_TEMPLATE, build_random_adapter, build_tiny_model
from worker.errors import InputError
from worker.gguf_bundle import export_gguf_lora, export_gguf_merged, gguf_peak_bytes
from worker.gguf_export import model_to_gguf, permute_rows, quantization_available, unpermute_rows
from worker.gguf_lora import lora_to_gguf
from worker.ollama_modelfile import CHATML_TEMPLATE as OLLAMA_CHATML
from worker.ollama_modelfile import LLAMA3_TEMPLATE, modelfile_text, ollama_chat

gguf = pytest.importorskip("gguf")

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HEADS = {"q_proj": 4, "k_proj": 2}  # the tiny Llama: 4 attention heads, 2 key/value heads
LLAMA3_HF_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def fp16_llama(tmp_path_factory):
    """A tiny Llama whose float32 weights are all float16 values, so an f16 GGUF holds them exactly."""
    folder = build_tiny_model(tmp_path_factory.mktemp("gguf-llama"), "llama")
    weights = {k: v.half().float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def adapter(fp16_llama, tmp_path_factory):
    return build_random_adapter(fp16_llama, tmp_path_factory.mktemp("gguf-adapter"), seed=3, target_modules=ALL_LINEAR)


def read(path):
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: t for t in reader.tensors}


def gguf_name(hf_name):
    layer, module = re.search(r"layers\.(\d+)\.\w+\.(\w+)", hf_name).groups()
    short = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
    short |= {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    return f"blk.{layer}.{short[module]}.weight", module


def test_lora_gguf_holds_every_adapter_matrix_as_llama_cpp_expects(adapter, fp16_llama, tmp_path):
    seen = []
    result = lora_to_gguf(adapter, fp16_llama, tmp_path / "a.gguf", progress=lambda d, n: seen.append((d, n)))
    fields, tensors = read(result.path)
    assert fields["general.architecture"] == "llama" and fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora" and fields["adapter.lora.alpha"] == 8.0
    state = load_file(f"{adapter}/adapter_model.safetensors")
    assert len(tensors) == len(state) == 2 * 2 * len(ALL_LINEAR) == result.tensors
    assert seen[-1] == (len(state), len(state))
    for key, value in state.items():
        name, module = gguf_name(key)
        is_a = ".lora_A." in key
        t = tensors[f"{name}.lora_{'a' if is_a else 'b'}"]
        expected = value.numpy()
        if not is_a and module in HEADS:
            expected = permute_rows(expected, HEADS[module])
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == list(expected.shape[::-1]), f"{key}: GGUF dimensions are numpy's reversed"
        np.testing.assert_array_equal(np.asarray(t.data), expected, err_msg=key)


def test_lora_gguf_with_the_base_gguf_is_peft_merge(adapter, fp16_llama, tmp_path):
    """llama.cpp adds alpha / rank * lora_b @ lora_a to the base GGUF's weight: that is PEFT's merged weight."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = model_to_gguf(fp16_llama, tmp_path / "base.gguf", quantization="f16")
    _, base_t = read(base.path)
    fields, lora_t = read(lora_to_gguf(adapter, fp16_llama, tmp_path / "a.gguf").path)
    model = AutoModelForCausalLM.from_pretrained(fp16_llama, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()
    for key, value in merged.items():
        if not any(f".{m}." in key for m in ALL_LINEAR):
            continue
        name, module = gguf_name(key)
        a, b = np.asarray(lora_t[f"{name}.lora_a"].data), np.asarray(lora_t[f"{name}.lora_b"].data)
        applied = np.asarray(base_t[name].data, dtype=np.float32) + fields["adapter.lora.alpha"] / a.shape[0] * (b @ a)
        want = value.numpy()
        if module in HEADS:
            want = permute_rows(want, HEADS[module])
        np.testing.assert_allclose(applied, want, atol=1e-5, err_msg=key)


def test_rslora_and_alpha_patterns_are_folded_into_b(adapter, fp16_llama, tmp_path):
    folder = tmp_path / "rs"
    shutil.copytree(adapter, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config |= {"use_rslora": True, "alpha_pattern": {"v_proj": 2.0}}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    _, tensors = read(lora_to_gguf(folder, fp16_llama, tmp_path / "rs.gguf").path)
    state = load_file(f"{folder}/adapter_model.safetensors")
    # llama.cpp scales by 8 / 4; PEFT by 8 / sqrt(4) (q) and 2 / sqrt(4) (v).
    b_q = state["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].numpy()
    b_v = state["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"].numpy()
    np.testing.assert_allclose(tensors["blk.0.attn_q.weight.lora_b"].data, permute_rows(b_q, 4) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(tensors["blk.0.attn_v.weight.lora_b"].data, b_v * 0.5, rtol=1e-6)


def test_adapters_a_gguf_lora_cannot_hold_are_refused(adapter, fp16_llama, tmp_path):
    for change, words in (({"use_dora": True}, "DoRA"), ({"modules_to_save": ["lm_head"]}, "modules_to_save")):
        folder = tmp_path / words
        shutil.copytree(adapter, folder)
        config = json.loads((folder / "adapter_config.json").read_text()) | change
        (folder / "adapter_config.json").write_text(json.dumps(config))
        with pytest.raises(InputError, match=words):
            lora_to_gguf(folder, fp16_llama, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_base_gguf_has_llama_cpp_metadata_tokenizer_and_weights(fp16_llama, tmp_path):
    from transformers import AutoTokenizer

    result = model_to_gguf(fp16_llama, tmp_path / "m.gguf", quantization="f16")
    fields, tensors = read(result.path)
    tok = AutoTokenizer.from_pretrained(fp16_llama)
    expected = {
        "general.architecture": "llama",
        "general.type": "model",
        "general.file_type": 1,
        "llama.block_count": 2,
        "llama.context_length": 512,
        "llama.embedding_length": 64,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.rope.freq_base": 10000.0,
        "llama.vocab_size": 400,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": tok.bos_token_id,
        "tokenizer.ggml.eos_token_id": tok.eos_token_id,
        "tokenizer.ggml.padding_token_id": tok.pad_token_id,
        "tokenizer.chat_template": CHATML_TEMPLATE,
    }
    assert {k: fields.get(k) for k in expected} == expected
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    vocab = {i: t for t, i in tok.get_vocab().items()}
    assert fields["tokenizer.ggml.tokens"] == [vocab[i] for i in range(400)]
    types = fields["tokenizer.ggml.token_type"]
    assert [types[i] for i in (0, 1, 2, 3)] == [3, 3, 3, 1], "special tokens are control tokens"
    merges = json.loads((fp16_llama / "tokenizer.json").read_text())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    weights = load_file(str(fp16_llama / "model.safetensors"))
    assert len(tensors) == len(weights) == result.tensors
    tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    for key, value in weights.items():
        t = tensors[tensor_map.get_name(key, try_suffixes=(".weight",))]
        data = np.asarray(t.data, dtype=np.float32)
        module = key.split(".")[-2]
        if module in HEADS:
            data = unpermute_rows(data, HEADS[module])
        assert t.tensor_type == (gguf.GGMLQuantizationType.F32 if value.dim() == 1 else gguf.GGMLQuantizationType.F16)
        np.testing.assert_array_equal(data, value.numpy(), err_msg=key)


def test_round_trip_through_the_projects_gguf_reader_gives_identical_logits(fp16_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.demo_model import convert_gguf_to_hf

    model_to_gguf(fp16_llama, tmp_path / "m.gguf", quantization="f16")
    back = convert_gguf_to_hf(tmp_path / "m.gguf", tmp_path / "back")
    text = "Extract the city and the date: Ada, Paris 2024-05-01"
    tok, tok_back = AutoTokenizer.from_pretrained(fp16_llama), AutoTokenizer.from_pretrained(back)
    ids = tok(text, return_tensors="pt").input_ids
    assert tok_back(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
    chat = [{"role": "user", "content": "hello"}]
    assert tok_back.apply_chat_template(chat, tokenize=False) == tok.apply_chat_template(chat, tokenize=False)
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(fp16_llama, dtype=torch.float32)(ids).logits
        logits_back = AutoModelForCausalLM.from_pretrained(back, dtype=torch.float32)(ids).logits
    assert torch.equal(logits, logits_back)


def test_q8_0_and_bf16_hold_the_weights_within_their_rounding(fp16_llama, tmp_path):
    weights = load_file(str(fp16_llama / "model.safetensors"))
    tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    for quantization, file_type in (("q8_0", 7), ("bf16", 32)):
        result = model_to_gguf(fp16_llama, tmp_path / f"{quantization}.gguf", quantization=quantization)
        fields, tensors = read(result.path)
        assert fields["general.file_type"] == file_type
        for key, value in weights.items():
            t = tensors[tensor_map.get_name(key, try_suffixes=(".weight",))]
            data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(value.shape)
            if key.split(".")[-2] in HEADS:
                data = unpermute_rows(data, HEADS[key.split(".")[-2]])
            want = value.numpy()
            if value.dim() == 1:
                np.testing.assert_array_equal(data, want)
            elif quantization == "q8_0":
                assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
                # each block of 32 shares one scale, max|w| / 127 stored as f16: at most half a step, plus its rounding
                step = np.abs(want).reshape(-1, 32).max(axis=1, keepdims=True) / 127
                assert (np.abs(data - want).reshape(-1, 32) <= step * 0.6).all(), key
            else:
                np.testing.assert_array_equal(data, value.bfloat16().float().numpy())
    assert result.bytes < (tmp_path / "q8_0.gguf").stat().st_size * 2


def test_unavailable_quantizations_and_other_architectures_are_refused_in_words(fp16_llama, tiny_gpt2, tmp_path):
    assert not quantization_available("q4_k_m")
    with pytest.raises(InputError, match="q4_k_m is not available on this worker"):
        model_to_gguf(fp16_llama, tmp_path / "q4.gguf", quantization="q4_k_m")
    with pytest.raises(InputError, match="Llama-architecture"):
        model_to_gguf(tiny_gpt2, tmp_path / "g.gguf")
    assert not list(tmp_path.iterdir())


def render_go(template, messages):
    """Ollama's two templates expanded by hand: the range body per message, `{{-` trimming what precedes it."""
    head, rest = template.split("{{- range .Messages }}")
    body, tail = re.split(r"\{\{-? end \}\}", rest)
    pieces = [body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"]) for m in messages]
    if "{{- end }}" in rest:
        pieces = [p.rstrip() for p in pieces]
    return head + "".join(pieces) + tail


def test_ollama_templates_render_what_the_chat_templates_render():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    chat = [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Ada, Paris"},
        {"role": "assistant", "content": '{"city": "Paris"}'},
        {"role": "user", "content": "Bob, Rome"},
    ]
    env = ImmutableSandboxedEnvironment()
    for hf, family, go, bos in (
        (CHATML_TEMPLATE, "chatml", OLLAMA_CHATML, ""),
        (LLAMA3_HF_TEMPLATE, "llama3", LLAMA3_TEMPLATE, "<s>"),
    ):
        rendered = env.from_string(hf).render(messages=chat, add_generation_prompt=True, bos_token=bos)
        ollama = ollama_chat(hf)
        assert ollama.family == family and ollama.template == go and not ollama.note
        assert bos + render_go(go, chat) == rendered  # llama.cpp adds the BOS token itself


def test_modelfile_for_lora_merged_and_unknown_templates(adapter, fp16_llama, tmp_path):
    stages = []
    bundle = export_gguf_lora(adapter, fp16_llama, tmp_path / "lora", progress=lambda *a: stages.append(a))
    assert sorted(bundle.files) == ["Modelfile", "adapter.gguf", "model.gguf"] and not bundle.notes
    assert all(p.is_file() for p in bundle.files.values())
    assert {s for s, _, _ in stages} == {"base", "adapter"}
    text = (tmp_path / "lora" / "Modelfile").read_text()
    assert text == bundle.modelfile
    assert "FROM ./model.gguf\nADAPTER ./adapter.gguf\n" in text
    assert f'TEMPLATE """{OLLAMA_CHATML}"""' in text
    assert text.endswith('PARAMETER stop "<|im_start|>"\nPARAMETER stop "<|im_end|>"\n')
    # the base GGUF made once is reused: only the adapter is written
    again = export_gguf_lora(adapter, fp16_llama, tmp_path / "again", base_gguf=bundle.files["model.gguf"])
    assert not (tmp_path / "again" / "model.gguf").exists() and again.files["model.gguf"] == bundle.files["model.gguf"]

    merged = export_gguf_merged(fp16_llama, tmp_path / "merged", quantization="q8_0")
    assert sorted(merged.files) == ["Modelfile", "model.gguf"]
    assert "ADAPTER" not in merged.modelfile and "FROM ./model.gguf" in merged.modelfile
    assert 0 < gguf_peak_bytes(fp16_llama) < 10 * 400 * 64 * 4

    smol = "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are SmolLM<|im_end|>\\n' }}{% endif %}<|im_start|><|im_end|>"
    assert 'SYSTEM """You are SmolLM"""' in modelfile_text(model_file="model.gguf", chat_template=smol)
    odd = modelfile_text(model_file="model.gguf", chat_template="[INST] {{ messages }} [/INST]", eos_token="</s>")
    assert "\nTEMPLATE " not in odd and "# Note: the chat template is not one this product translates" in odd
    assert 'PARAMETER stop "</s>"' in odd


def test_an_embedding_lora_is_written_as_llama_cpp_reads_token_embd(fp16_llama, tmp_path):
    """llama.cpp checks token_embd's LoRA as flipped: lora_a [rank, vocab], lora_b [rank, hidden] (GGUF order)."""
    folder = build_random_adapter(fp16_llama, tmp_path / "emb", seed=4, target_modules=("embed_tokens",))
    _, tensors = read(lora_to_gguf(folder, fp16_llama, tmp_path / "emb.gguf").path)
    state = load_file(f"{folder}/adapter_model.safetensors")
    a = state["base_model.model.model.embed_tokens.lora_embedding_A"].numpy()
    assert list(tensors["token_embd.weight.lora_a"].shape) == [4, 400]
    assert list(tensors["token_embd.weight.lora_b"].shape) == [4, 64]
    np.testing.assert_array_equal(np.asarray(tensors["token_embd.weight.lora_a"].data), a.T)
