"""Reading an untrusted dataset file in a child process with a memory and a time limit.

`load_dataset_file_limited` runs `load_dataset_file` in `python -m worker.data.sandbox`, whose
address space is capped with RLIMIT_AS and whose run is capped by a wall-clock timeout. The child
writes the normalised JSONL itself and answers with a small JSON summary (or the error), so the
caller never holds the rows: a file that unpacks into more than the limits kill the child, not
the web process. Nothing crosses the process boundary but JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.child_process import StderrTail, limit_address_space, start_child
from worker.data.limits import DataLimits
from worker.data.problems import DatasetError, Problem, SchemaUnknown, base_name
from worker.errors import InputError

log = logging.getLogger(__name__)

Progress = Callable[[str, int], object]  # on_progress(stage, rows)


@dataclass
class LoadedSummary:
    """What `load_dataset_file` found, without the examples (they are in `normalized_path`)."""

    normalized_path: Path
    format: str
    schema: str
    columns: list[str]
    rows: int
    duplicates: list[tuple[int, int]]
    dropped_duplicates: int
    sha256: str
    turns: dict[str, int]
    chars: int


def load_dataset_file_limited(
    path: str | Path,
    filename: str | None = None,
    *,
    normalized_path: str | Path,
    limits: DataLimits | None = None,
    memory_mb: int = 2048,
    seconds: float = 60,
    mapping: dict[str, Any] | None = None,
    drop_duplicates: bool = False,
    on_progress: Progress | None = None,
) -> LoadedSummary:
    """`load_dataset_file` in a child process limited to `memory_mb` of address space and `seconds`.

    `on_progress(stage, rows)` is called (in this process) about every half second while the stage
    the child reports changes: a page can follow the check.

    Writes the normalised JSONL to `normalized_path`. Raises what the loader raises (DatasetError,
    SchemaUnknown with its columns, InputError), and DatasetError naming the limit when the child
    runs out of memory or time.
    """
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 1:
        raise InputError("memory_mb", f"must be a positive integer, got {memory_mb!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise InputError("seconds", f"must be a positive number, got {seconds!r}")
    path = Path(path)
    name = base_name(filename) if filename else path.name
    limits = limits or DataLimits()
    with tempfile.TemporaryDirectory(prefix="dataset-read-") as scratch:
        request = Path(scratch) / "request.json"
        answer = Path(scratch) / "answer.json"
        progress = Path(scratch) / "progress.json"
        request.write_text(
            json.dumps(
                {
                    "path": str(path),
                    "filename": name,
                    "normalized_path": str(normalized_path),
                    "answer": str(answer),
                    "limits": dataclasses.asdict(limits),
                    "mapping": mapping,
                    "drop_duplicates": drop_duplicates,
                    "memory_mb": memory_mb,
                    "progress": str(progress),
                }
            )
        )
        done = _run_child(request, progress, seconds, on_progress, name)
        result = json.loads(answer.read_text()) if answer.exists() else None
    if result is None:
        stderr = done.stderr.decode("utf-8", "replace")[-2000:]
        if done.returncode < 0 or "memory" in stderr.lower():
            # Killed by a signal (an allocation past RLIMIT_AS aborts some native code), or a
            # native library gave up allocating.
            log.warning("dataset reader for %s ended with %s: %s", name, done.returncode, stderr)
            raise _out_of_memory(name, memory_mb)
        raise RuntimeError(f"the dataset reader failed (exit {done.returncode}): {stderr}")
    return _from_answer(result, name, memory_mb)


def _run_child(
    request: Path, progress: Path, seconds: float, on_progress: Progress | None, name: str
) -> subprocess.CompletedProcess[bytes]:
    """Run the reader on `request`; kill it past `seconds`; relay its progress file while it runs."""
    deadline = time.monotonic() + seconds
    last: Any = None
    with start_child("worker.data.sandbox", request) as child:
        stderr = StderrTail(child)
        while True:
            try:
                child.wait(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    child.kill()
                    child.wait()
                    raise DatasetError(
                        name,
                        [
                            Problem(
                                0, "", f"took longer than {seconds:g} s to read (limit DATASET_PARSE_SECONDS)", unit=""
                            )
                        ],
                    ) from None
            if on_progress is not None:
                last = _relay(progress, last, on_progress)
        if on_progress is not None:
            _relay(progress, last, on_progress)  # the stage it ended in
        stderr.join(timeout=5)
    return subprocess.CompletedProcess(child.args, child.returncode, b"", b"".join(stderr.chunks))


def _relay(progress: Path, last: Any, on_progress: Progress) -> Any:
    try:
        state = json.loads(progress.read_text())
    except (OSError, ValueError):
        return last
    if state != last:
        on_progress(str(state.get("stage", ""))[:100], int(state.get("rows", 0)))
    return state


def _out_of_memory(name: str, memory_mb: int) -> DatasetError:
    return DatasetError(
        name, [Problem(0, "", f"needs more than {memory_mb:,} MB to read (limit DATASET_PARSE_MEMORY_MB)", unit="")]
    )


def _from_answer(result: dict[str, Any], name: str, memory_mb: int) -> LoadedSummary:
    error = result.get("error")
    if error == "memory":
        raise _out_of_memory(name, memory_mb)
    if error == "config":
        raise InputError(result["field"], result["message"])
    if error == "dataset":
        problems = [Problem(**p) for p in result["problems"]]
        if result.get("columns") is not None:
            first = problems[0]
            raise SchemaUnknown(
                result["filename"], result["columns"], first.line, first.unit, samples=result.get("samples")
            )
        raise DatasetError(result["filename"], problems, result["total"])
    summary = result["summary"]
    summary["duplicates"] = [tuple(d) for d in summary["duplicates"]]
    return LoadedSummary(normalized_path=Path(summary.pop("normalized_path")), **summary)


def _read(request: dict[str, Any]) -> dict[str, Any]:
    """The child's work: load, write the normalised JSONL, answer with the summary or the error."""
    from worker.data.loading import load_dataset_file
    from worker.data.mapping import ColumnMapping
    from worker.data.normalized import write_normalized_jsonl

    try:
        mapping = ColumnMapping.from_dict(request["mapping"]) if request["mapping"] else None
        loaded = load_dataset_file(
            request["path"],
            request["filename"],
            mapping=mapping,
            drop_duplicates=request["drop_duplicates"],
            limits=DataLimits(**request["limits"]),
            progress=_progress_writer(request),
        )
        _progress_writer(request)("writing the examples", loaded.rows)
        write_normalized_jsonl(loaded.examples, request["normalized_path"])
    except MemoryError:
        return {"error": "memory"}
    except DatasetError as exc:
        return {
            "error": "dataset",
            "filename": exc.filename,
            "total": exc.total,
            "problems": [dataclasses.asdict(p) for p in exc.problems],
            "columns": exc.columns if isinstance(exc, SchemaUnknown) else None,
            "samples": exc.samples if isinstance(exc, SchemaUnknown) else None,
        }
    except InputError as exc:
        return {"error": "config", "field": exc.field, "message": exc.message}
    summary = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded) if f.name != "examples"}
    return {"summary": {**summary, "normalized_path": request["normalized_path"]}}


def _progress_writer(request: dict[str, Any]) -> Callable[[str, int], None]:
    """progress(stage, rows) for the child: the file the parent relays (atomically replaced)."""
    path = request.get("progress")

    def write(stage: str, rows: int) -> None:
        if path:
            tmp = f"{path}.tmp"
            Path(tmp).write_text(json.dumps({"stage": stage, "rows": rows}))
            os.replace(tmp, path)

    return write


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text())
    limit_address_space(request["memory_mb"])  # before anything big is imported or read
    # Native readers (pyarrow) start a thread per core, each reserving address space; one is enough here.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ARROW_IO_THREADS"):
        os.environ[variable] = "1"
    try:
        answer = _read(request)
    except MemoryError:
        answer = {"error": "memory"}
    Path(request["answer"]).write_text(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
