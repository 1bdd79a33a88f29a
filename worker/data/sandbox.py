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
from dataclasses import dataclass
from pathlib import Path

from worker.config import ConfigError
from worker.data.limits import DataLimits
from worker.data.problems import DatasetError, Problem, SchemaUnknown, base_name

log = logging.getLogger(__name__)

_PROJECT_ROOT = Path(__file__).resolve().parents[2]  # where `python -m worker.data.sandbox` resolves


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


def load_dataset_file_limited(path: str | Path, filename: str | None = None, *, normalized_path: str | Path,
                              limits: DataLimits | None = None, memory_mb: int = 2048, seconds: float = 60,
                              mapping: dict | None = None, drop_duplicates: bool = False) -> LoadedSummary:
    """`load_dataset_file` in a child process limited to `memory_mb` of address space and `seconds`.

    Writes the normalised JSONL to `normalized_path`. Raises what the loader raises (DatasetError,
    SchemaUnknown with its columns, ConfigError), and DatasetError naming the limit when the child
    runs out of memory or time.
    """
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 1:
        raise ConfigError("memory_mb", f"must be a positive integer, got {memory_mb!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ConfigError("seconds", f"must be a positive number, got {seconds!r}")
    path = Path(path)
    name = base_name(filename) if filename else path.name
    limits = limits or DataLimits()
    with tempfile.TemporaryDirectory(prefix="dataset-read-") as scratch:
        request = Path(scratch) / "request.json"
        answer = Path(scratch) / "answer.json"
        request.write_text(json.dumps({
            "path": str(path), "filename": name, "normalized_path": str(normalized_path), "answer": str(answer),
            "limits": dataclasses.asdict(limits), "mapping": mapping, "drop_duplicates": drop_duplicates,
            "memory_mb": memory_mb,
        }))
        try:
            done = subprocess.run([sys.executable, "-m", "worker.data.sandbox", str(request)], cwd=_PROJECT_ROOT,
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=seconds, check=False)
        except subprocess.TimeoutExpired:  # run() has killed the child
            raise DatasetError(name, [Problem(0, "", f"took longer than {seconds:g} s to read "
                                                     "(limit DATASET_PARSE_SECONDS)", unit="")]) from None
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


def _out_of_memory(name: str, memory_mb: int) -> DatasetError:
    return DatasetError(name, [Problem(0, "", f"needs more than {memory_mb:,} MB to read "
                                              "(limit DATASET_PARSE_MEMORY_MB)", unit="")])


def _from_answer(result: dict, name: str, memory_mb: int) -> LoadedSummary:
    error = result.get("error")
    if error == "memory":
        raise _out_of_memory(name, memory_mb)
    if error == "config":
        raise ConfigError(result["field"], result["message"])
    if error == "dataset":
        problems = [Problem(**p) for p in result["problems"]]
        if result.get("columns") is not None:
            first = problems[0]
            raise SchemaUnknown(result["filename"], result["columns"], first.line, first.unit)
        raise DatasetError(result["filename"], problems, result["total"])
    summary = result["summary"]
    summary["duplicates"] = [tuple(d) for d in summary["duplicates"]]
    return LoadedSummary(normalized_path=Path(summary.pop("normalized_path")), **summary)


def _read(request: dict) -> dict:
    """The child's work: load, write the normalised JSONL, answer with the summary or the error."""
    from worker.data.loading import load_dataset_file
    from worker.data.mapping import ColumnMapping
    from worker.data.normalized import write_normalized_jsonl

    try:
        mapping = ColumnMapping.from_dict(request["mapping"]) if request["mapping"] else None
        loaded = load_dataset_file(request["path"], request["filename"], mapping=mapping,
                                   drop_duplicates=request["drop_duplicates"],
                                   limits=DataLimits(**request["limits"]))
        write_normalized_jsonl(loaded.examples, request["normalized_path"])
    except MemoryError:
        return {"error": "memory"}
    except DatasetError as exc:
        return {"error": "dataset", "filename": exc.filename, "total": exc.total,
                "problems": [dataclasses.asdict(p) for p in exc.problems],
                "columns": exc.columns if isinstance(exc, SchemaUnknown) else None}
    except ConfigError as exc:
        return {"error": "config", "field": exc.field, "message": exc.message}
    summary = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded) if f.name != "examples"}
    return {"summary": {**summary, "normalized_path": request["normalized_path"]}}


def _limit_memory(memory_mb: int) -> None:
    import resource

    limit = memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text())
    _limit_memory(request["memory_mb"])  # before anything big is imported or read
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
