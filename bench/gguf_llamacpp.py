"""The GGUF exports proven by llama.cpp itself (issue 26): do they answer the demo task as PEFT does?

    .venv/bin/python bench/gguf_llamacpp.py [--sft-steps 20] [--threads 2] [--max-tokens 48] [--fresh]
                                            [--adapter DIR] [--with-base]

1. llama.cpp: `llama-cpp-python==LLAMACPP_VERSION`, built from source for the CPU only, in its own venv
   (`var/llamacpp-venv`, made here when it lacks the package; the build takes 7+ minutes on 2 cores). The
   llama.cpp half of this bench runs in a child process of that venv, which needs no torch.
2. An adapter on the demo task: `worker.engine.train` on `worker/demo_data/demo_dataset.jsonl` (SFT, 20 steps,
   lr 1e-3, as bench/rft_demo.py's step 1), kept in `var/bench-gguf/` and reused (`--fresh` trains anew); or
   `--adapter DIR`, an adapter trained before on the demo model.
3. The exports, each in a fresh child process (seconds, VmHWM): `gguf-lora` (base f16 + adapter f32 +
   Modelfile, `worker.gguf_bundle.export_gguf_lora`), the merge (`worker.export.merge_adapter`) and
   `gguf-merged` f16 and q8_0 from that merged folder (`export_gguf_merged`), with sizes beside the PEFT zip's.
4. PEFT's greedy answers (the adapter on the Hugging Face base, fp32) to the 20 held-out prompts
   (`demo_eval.jsonl`), the prompt being the HF tokenizer's `apply_chat_template(..., add_generation_prompt=True)`
   token ids. llama.cpp gets the *same token ids* (`Llama.generate`, temp 0 / top_k 1, repeat penalty off, stop
   at the GGUF's end-of-generation token), so the answers differ only by the model files. Checked beside it:
   llama.cpp's own tokenization of the prompt text (the GGUF's tokenizer and pre-tokenizer) gives the same ids;
   the GGUF's `tokenizer.chat_template` rendered by llama-cpp-python's Jinja2 formatter gives the same text; and
   `create_chat_completion` (llama.cpp's whole chat path: template, tokenizer, stop token) answers the same.
5. A table per variant: exact-match answers (token ids), the first N tokens agreeing, the mean common prefix,
   answers that are JSON in the taught format ({"name", "city", "date"}) and with the expected fields.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.measure_peak import peak_rss_mb  # noqa: E402  (the repository root is on the path from here)

LLAMACPP_VERSION = "0.3.36"  # PyPI's release on 2026-12-06
VENV = ROOT / "var" / "llamacpp-venv"
WORK = ROOT / "var" / "bench-gguf"
DEFAULT_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
DEMO = ROOT / "worker" / "demo_data"
FIELDS = ("name", "city", "date")
FIRST_N = 8
CPU_ONLY = (
    "-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF "
    "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF"
)


def load_average() -> float:
    return os.getloadavg()[0]


# ---- 1. llama.cpp ---------------------------------------------------------------------------------------------


def ensure_llamacpp() -> Path:
    """The python of a venv where `import llama_cpp` works, building llama-cpp-python there when it does not."""
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print(f"building llama-cpp-python=={LLAMACPP_VERSION} for the CPU in {VENV} (7+ minutes) ...", flush=True)
    env = dict(os.environ, CMAKE_ARGS=CPU_ONLY, MAKEFLAGS="-j2", CMAKE_BUILD_PARALLEL_LEVEL="2")
    install = [str(python), "-m", "pip", "install", "--no-cache-dir", f"llama-cpp-python=={LLAMACPP_VERSION}"]
    subprocess.run(install, check=True, env=env)
    subprocess.run(probe, check=True)
    return python


# ---- 2. the adapter -------------------------------------------------------------------------------------------


def train_adapter(model: Path, steps: int, fresh: bool) -> Path:
    """The demo SFT adapter (bench/rft_demo.py's step 1), reused from var/bench-gguf/ unless `fresh`."""
    import shutil

    adapter = WORK / "sft" / "adapter"
    if (adapter / "adapter_model.safetensors").is_file() and not fresh:
        print(f"adapter: reusing {adapter.relative_to(ROOT)}", flush=True)
        return adapter
    from worker.config import TrainConfig, TrainSpec
    from worker.engine import train
    from worker.reporting import MemoryReporter

    shutil.rmtree(WORK / "sft", ignore_errors=True)
    config = TrainConfig(max_steps=steps, learning_rate=1e-3, warmup_ratio=0.0, final_eval=False, seed=42)
    spec = TrainSpec(str(model), str(DEMO / "demo_dataset.jsonl"), str(WORK / "sft"), config, device="cpu")
    began = time.monotonic()
    result = train(spec, MemoryReporter())
    print(f"adapter: supervised {result.status}, {steps} steps in {time.monotonic() - began:.0f} s", flush=True)
    return adapter


# ---- 3. the exports, each in its own process ------------------------------------------------------------------


def _export_child(kind: str, model: str, adapter: str, out: str) -> None:
    """One export in this (fresh) process; prints one JSON line: seconds per stage, VmHWM, file sizes."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    stages: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        stages.setdefault(stage, [time.monotonic(), 0.0])[1] = time.monotonic()

    from worker.export import merge_adapter
    from worker.gguf_bundle import export_gguf_lora, export_gguf_merged

    baseline = peak_rss_mb()
    began = time.monotonic()
    if kind == "import":
        files: dict[str, Path] = {}
    elif kind == "gguf-lora":
        files = export_gguf_lora(adapter, model, out, progress=progress).files
    elif kind == "merge":
        folder = merge_adapter(model, adapter, out)
        files = {p.name: p for p in folder.iterdir()}
    else:
        quantization = kind.rsplit("-", 1)[1]
        merged = str(WORK / "exports" / "merge")
        files = export_gguf_merged(merged, out, quantization=quantization, progress=progress).files
    seconds = time.monotonic() - began
    figures = {
        "seconds": seconds,
        "stages": {s: t[1] - t[0] for s, t in stages.items()},
        "peak_mb": peak_rss_mb(),
        "import_mb": baseline,
        "files": {name: path.stat().st_size for name, path in files.items()},
    }
    print(json.dumps(figures))


def run_export(kind: str, model: Path, adapter: Path, threads: int) -> dict[str, Any]:
    out = WORK / "exports" / kind
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--export-child", kind, str(model), str(adapter), str(out)]
    load = load_average()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"export {kind} failed:\n{done.stderr[-4000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures.update(kind=kind, out=str(out), load=load)
    return figures


def peft_zip_bytes(adapter: Path) -> int:
    from worker.export import zip_folder

    return zip_folder(adapter, WORK / "exports" / "adapter.zip").stat().st_size


# ---- 4. PEFT's answers ----------------------------------------------------------------------------------------


def eval_rows() -> list[dict[str, Any]]:
    rows = []
    for line in (DEMO / "demo_eval.jsonl").read_text().splitlines():
        messages = json.loads(line)["messages"]
        rows.append({"messages": messages[:-1], "expected": json.loads(messages[-1]["content"])})
    return rows


def peft_answers(model: Path, adapter: Path, rows: list[dict[str, Any]], max_tokens: int) -> list[dict[str, Any]]:
    """Each prompt's text and token ids (the HF chat template) and PEFT's greedy answer ids (up to the eos)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from worker.modeling import load_tokenizer

    tok = load_tokenizer(str(model))
    base = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    eos = tok.eos_token_id
    answers = []
    for row in rows:
        text = tok.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = peft_model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )
        answer = out[0, len(ids) :].tolist()
        answer = answer[: answer.index(eos)] if eos in answer else answer
        answers.append({"prompt_text": text, "prompt_ids": ids, "ids": answer, "text": tok.decode(answer)})
    return answers


# ---- 4b. llama.cpp's answers, in a child of the llama.cpp venv ------------------------------------------------


def _llama_generate(llm: Any, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """Greedy decoding from exactly these prompt ids, up to the GGUF's end-of-generation token."""
    import llama_cpp

    llm.reset()
    answer: list[int] = []
    sampling = {"temp": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
    for token in llm.generate(prompt_ids, **sampling):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        answer.append(int(token))
        if len(answer) >= max_tokens:
            break
    return answer


def _llama_child(spec_path: str, out_path: str) -> None:
    """Load one GGUF (with its LoRA) in llama.cpp and answer every prompt three ways (see the module's doc)."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    spec = json.loads(Path(spec_path).read_text())
    began = time.monotonic()
    llm = llama_cpp.Llama(
        model_path=spec["model"],
        lora_path=spec.get("lora"),
        n_ctx=512,
        n_threads=spec["threads"],
        n_threads_batch=spec["threads"],
        seed=0,
        verbose=False,
    )
    load_s = time.monotonic() - began
    template = llm.metadata.get("tokenizer.chat_template", "")
    vocab = llm._model
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=vocab.token_get_text(vocab.token_eos()),
        bos_token=vocab.token_get_text(vocab.token_bos()),
    )
    results = []
    began = time.monotonic()
    for row in spec["rows"]:
        ids = _llama_generate(llm, row["prompt_ids"], spec["max_tokens"])
        rendered = formatter(messages=row["messages"]).prompt
        chat = llm.create_chat_completion(
            messages=row["messages"],
            temperature=0.0,
            top_k=1,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            max_tokens=spec["max_tokens"],
            seed=0,
        )
        results.append(
            {
                "ids": ids,
                "text": llm.detokenize(ids).decode("utf-8", errors="replace"),
                "tokenized": llm.tokenize(row["prompt_text"].encode(), add_bos=False, special=True),
                "rendered": rendered,
                "chat_text": chat["choices"][0]["message"]["content"] or "",
            }
        )
    answer_s = time.monotonic() - began
    meta = {k: v for k, v in llm.metadata.items() if k.startswith(("tokenizer.ggml.", "general."))}
    meta = {k: v for k, v in meta.items() if len(str(v)) < 200}
    out = {"load_s": load_s, "answer_s": answer_s, "peak_mb": peak_rss_mb(), "meta": meta, "results": results}
    Path(out_path).write_text(json.dumps(out))


def llama_answers(
    python: Path,
    name: str,
    model: Path,
    lora: Path | None,
    answers: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    max_tokens: int,
    threads: int,
) -> dict[str, Any]:
    spec = {
        "model": str(model),
        "lora": str(lora) if lora else None,
        "threads": threads,
        "max_tokens": max_tokens,
        "rows": [
            {"messages": r["messages"], "prompt_ids": a["prompt_ids"], "prompt_text": a["prompt_text"]}
            for r, a in zip(rows, answers, strict=True)
        ],
    }
    spec_path, out_path = WORK / f"llama-{name}.spec.json", WORK / f"llama-{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    command = [str(python), __file__, "--llama-child", str(spec_path), str(out_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"llama.cpp on {name} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


# ---- 5. the comparison ----------------------------------------------------------------------------------------


def taught_format(text: str, expected: dict[str, str] | None = None) -> bool:
    """The answer is a JSON object with exactly the taught keys (and, given `expected`, their values)."""
    try:
        value = json.loads(text.strip())
    except ValueError:
        return False
    if not isinstance(value, dict) or set(value) != set(FIELDS):
        return False
    return expected is None or all(value[k] == expected[k] for k in FIELDS)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def compare(answers: list[dict[str, Any]], llama: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement of llama.cpp's answers with PEFT's, and the checks of the prompt side."""
    n = len(answers)
    exact = first_n = prefix = json_ok = fields_ok = tokens_same = template_same = chat_same = 0
    for peft, mine, row in zip(answers, llama["results"], rows, strict=True):
        exact += mine["ids"] == peft["ids"]
        needed = min(FIRST_N, len(peft["ids"]))
        first_n += common_prefix(mine["ids"], peft["ids"]) >= needed
        prefix += common_prefix(mine["ids"], peft["ids"])
        json_ok += taught_format(mine["text"])
        fields_ok += taught_format(mine["text"], row["expected"])
        tokens_same += mine["tokenized"] == peft["prompt_ids"]
        template_same += mine["rendered"] == peft["prompt_text"]
        chat_same += mine["chat_text"].strip() == peft["text"].strip()
    return {
        "n": n,
        "exact": exact,
        "first_n": first_n,
        "mean_prefix": prefix / n,
        "json": json_ok,
        "fields": fields_ok,
        "tokens_same": tokens_same,
        "template_same": template_same,
        "chat_same": chat_same,
        "load_s": llama["load_s"],
        "answer_s": llama["answer_s"],
        "peak_mb": llama["peak_mb"],
    }


def print_exports(exports: list[dict[str, Any]], zip_bytes: int) -> None:
    mb = 1024 * 1024
    print(f"\nPEFT adapter zip: {zip_bytes / mb:.2f} MiB")
    print(f"{'export':<16}{'seconds':>9}{'peak MiB':>10}{'import MiB':>11}{'load':>6}  files (MiB)")
    for e in exports:
        files = ", ".join(f"{k} {v / mb:.2f}" for k, v in e["files"].items() if not k.endswith(".json"))
        stages = " ".join(f"{s} {t:.1f}s" for s, t in e["stages"].items())
        print(
            f"{e['kind']:<16}{e['seconds']:>9.1f}{e['peak_mb']:>10.0f}{e['import_mb']:>11.0f}{e['load']:>6.2f}  "
            f"{files}{'  (' + stages + ')' if stages else ''}"
        )


def print_agreement(table: dict[str, dict[str, Any]], peft: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    n = len(peft)
    peft_json = sum(taught_format(a["text"]) for a in peft)
    peft_fields = sum(taught_format(a["text"], r["expected"]) for a, r in zip(peft, rows, strict=True))
    print(f"\nPEFT (adapter on the HF base, fp32): {peft_json}/{n} taught JSON, {peft_fields}/{n} fields right")
    head = (
        f"{'llama.cpp on':<14}{'exact':>7}{'first' + str(FIRST_N):>8}{'prefix':>8}{'JSON':>6}{'fields':>8}"
        f"{'tok ids':>9}{'template':>10}{'chat=':>7}{'load s':>8}{'answer s':>10}{'peak MiB':>10}"
    )
    print(head)
    for name, c in table.items():
        print(
            f"{name:<14}{c['exact']:>4}/{n:<2}{c['first_n']:>5}/{n:<2}{c['mean_prefix']:>8.1f}{c['json']:>3}/{n:<2}"
            f"{c['fields']:>5}/{n:<2}{c['tokens_same']:>6}/{n:<2}{c['template_same']:>7}/{n:<2}{c['chat_same']:>4}/{n:<2}"
            f"{c['load_s']:>8.1f}{c['answer_s']:>10.1f}{c['peak_mb']:>10.0f}"
        )


def print_differences(name: str, peft: list[dict[str, Any]], llama: dict[str, Any]) -> None:
    for i, (a, b) in enumerate(zip(peft, llama["results"], strict=True)):
        if a["ids"] != b["ids"]:
            print(f"  {name} #{i}: PEFT {a['text']!r}\n  {' ' * len(name)}     llama {b['text']!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--fresh", action="store_true", help="train the adapter anew")
    parser.add_argument("--with-base", action="store_true", help="also answer with the base GGUF alone")
    parser.add_argument("--adapter", help="use this PEFT adapter folder instead of training one")
    a = parser.parse_args()
    print(f"start {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 1-min load {load_average():.2f}", flush=True)
    python = ensure_llamacpp()
    import torch

    torch.set_num_threads(a.threads)
    from worker.demo_model import convert_gguf_to_hf, find_demo_gguf, is_complete_model_dir
    from worker.modeling import quiet_transformers

    quiet_transformers()
    model = Path(a.model)
    if not is_complete_model_dir(model):
        convert_gguf_to_hf(find_demo_gguf(), model)
    adapter = Path(a.adapter) if a.adapter else train_adapter(model, a.sft_steps, a.fresh)
    kinds = ("import", "gguf-lora", "merge", "gguf-merged-f16", "gguf-merged-q8_0")
    exports = {k: run_export(k, model, adapter, a.threads) for k in kinds}
    print_exports(list(exports.values()), peft_zip_bytes(adapter))
    rows = eval_rows()
    began = time.monotonic()
    peft = peft_answers(model, adapter, rows, a.max_tokens)
    print(f"\nPEFT answered {len(rows)} prompts in {time.monotonic() - began:.0f} s", flush=True)
    lora_dir = Path(exports["gguf-lora"]["out"])
    variants = {
        "base+LoRA f16": (lora_dir / "model.gguf", lora_dir / "adapter.gguf"),
        "merged f16": (Path(exports["gguf-merged-f16"]["out"]) / "model.gguf", None),
        "merged q8_0": (Path(exports["gguf-merged-q8_0"]["out"]) / "model.gguf", None),
    }
    if a.with_base:  # the sanity check: without the adapter, the answers should not agree
        variants["base, no LoRA"] = (lora_dir / "model.gguf", None)
    table, raw = {}, {}
    for name, (gguf_path, lora) in variants.items():
        raw[name] = llama_answers(python, f"v{len(raw)}", gguf_path, lora, peft, rows, a.max_tokens, a.threads)
        table[name] = compare(peft, raw[name], rows)
    print_agreement(table, peft, rows)
    print(f"\nGGUF tokenizer metadata: {raw['base+LoRA f16']['meta']}")
    for name in ("base+LoRA f16", "merged f16", "merged q8_0"):
        print_differences(name, peft, raw[name])
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "figures.json").write_text(json.dumps({"exports": exports, "agreement": table}, indent=1))
    print(f"end {time.strftime('%H:%M UTC', time.gmtime())}, 1-min load {load_average():.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--export-child":
        _export_child(*sys.argv[2:6])
    elif len(sys.argv) > 1 and sys.argv[1] == "--llama-child":
        _llama_child(*sys.argv[2:4])
    else:
        main()
