"""Converting an uploaded GGUF in a child process with a memory and a time limit.

`convert_gguf_limited` first reads the header (`worker.gguf_check`) and refuses a file that declares more than it
holds or than the disk and memory allow, then runs `convert_gguf_to_hf` in `python -m worker.gguf_convert`, whose
address space is capped with RLIMIT_AS: a model too large for the cap fails in the child, and the worker that
started it goes on answering. Nothing crosses the process boundary but JSON.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from worker.child_process import StderrTail, limit_address_space, start_child
from worker.gguf_check import GgufError, available_memory_bytes, gguf_refusal, read_gguf_layout

log = logging.getLogger(__name__)

UNREADABLE = "the GGUF file cannot be converted: its contents are not in a form this product can read"


def check_gguf(gguf_path: str | Path, out_dir: str | Path, *, memory_mb: int, max_parameters: int) -> None:
    """Refuse (GgufError, in plain words) a GGUF whose header lies about its size or whose float32 model would
    not fit the disk under `out_dir`, the child's `memory_mb` or the memory free now."""
    layout = read_gguf_layout(gguf_path)
    folder = Path(out_dir).parent
    folder.mkdir(parents=True, exist_ok=True)
    memory = min(memory_mb * 1024 * 1024, available_memory_bytes())
    refusal = gguf_refusal(
        layout, free_disk=shutil.disk_usage(folder).free, memory=memory, max_parameters=max_parameters
    )
    if refusal:
        raise GgufError(refusal)


def convert_gguf_limited(
    gguf_path: str | Path, out_dir: str | Path, *, memory_mb: int, seconds: float, max_parameters: int = 0
) -> None:
    """Check the header, then convert in a child limited to `memory_mb` of address space and `seconds`;
    GgufError names the limit or the reason when it cannot."""
    check_gguf(gguf_path, out_dir, memory_mb=memory_mb, max_parameters=max_parameters)
    with tempfile.TemporaryDirectory(prefix="gguf-convert-") as scratch:
        request, answer = Path(scratch) / "request.json", Path(scratch) / "answer.json"
        request.write_text(
            json.dumps({"gguf": str(gguf_path), "out": str(out_dir), "answer": str(answer), "memory_mb": memory_mb})
        )
        returncode, stderr = _run(request, seconds)
        result = json.loads(answer.read_text()) if answer.exists() else {}
    if result.get("ok"):
        return
    log.warning("GGUF conversion of %s ended with %s: %s", gguf_path, returncode, stderr[-4000:])
    # Past RLIMIT_AS: a MemoryError, a signal from native code, "Cannot allocate memory", or a library that
    # cannot be mapped ("failed to map segment").
    if result.get("error") == "memory" or returncode < 0 or re.search(r"memory|map segment", stderr, re.IGNORECASE):
        raise GgufError(
            f"converting the model needs more than the {memory_mb:,} MB of memory it may use (GGUF_CONVERT_MEMORY_MB)"
        )
    raise GgufError(UNREADABLE)


def _run(request: Path, seconds: float) -> tuple[int, str]:
    """Run the child on `request`; kill it past `seconds`."""
    with start_child("worker.gguf_convert", request) as child:
        stderr = StderrTail(child)
        try:
            child.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise GgufError(f"converting the model took longer than {seconds:g} s (GGUF_CONVERT_SECONDS)") from None
        stderr.join(timeout=5)
    return child.returncode, stderr.text()


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text())
    limit_address_space(request["memory_mb"])  # before torch is imported or a weight is read
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    try:
        from worker.demo_model import convert_gguf_to_hf

        convert_gguf_to_hf(request["gguf"], request["out"])
        answer: dict[str, object] = {"ok": True}
    except MemoryError:
        answer = {"error": "memory"}
    except Exception:  # the details go to stderr, which the parent logs; the user reads a plain reason
        log.exception("conversion failed")
        answer = {"error": "failed"}
    log.info("conversion ended in %.1f s", time.monotonic() - started)
    Path(request["answer"]).write_text(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
