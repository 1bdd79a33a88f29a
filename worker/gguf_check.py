"""Reading a GGUF file's header and checking what it declares before anything is built from it.

A GGUF names its tensors and their shapes in a header; the weights follow. A file of a few hundred KB can
declare a model of hundreds of billions of parameters, and converting it builds that model in float32 (``from_config``)
before any weight is read. `read_gguf_layout` reads the header only (llama.cpp's layout: magic, version, counts,
key/value pairs, tensor infos, aligned data) with every length checked against the file, and `gguf_refusal`
compares the declared weights with the file's size, the free disk and the memory the conversion may use.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from worker.errors import InputError

FIELD = "file"
GB = 1024**3
MAX_COUNT = 1_000_000  # tensors, key/value pairs or array items a header may declare (llama.cpp's vocabularies: ~250k)
MAX_STRING = 64 * 1024 * 1024
MAX_DIMS = 8  # GGML_MAX_DIMS is 4
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
NOT_VALID = "This file is not a valid GGUF model"


class GgufError(InputError):
    """The file is not a GGUF this product can read, or declares what it cannot hold."""

    def __init__(self, message: str):
        super().__init__(FIELD, message)


@dataclass(frozen=True)
class GgufLayout:
    """What a GGUF header declares: its tensors' element count and bytes, and where the data ends."""

    file_bytes: int
    tensors: int
    parameters: int
    data_end: int  # the byte the last declared tensor ends at
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # each tensor's name and dimensions, in the file's order

    @property
    def float32_bytes(self) -> int:
        return self.parameters * 4


class _Reader:
    def __init__(self, f: BinaryIO, size: int):
        self.f, self.size = f, size

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise GgufError(
                f"{NOT_VALID}: it ends after {self.size:,} byte{'' if self.size == 1 else 's'}, "
                "before the header is complete (a truncated upload?)"
            )
        return data

    def scalar(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def count(self, what: str, limit: int = MAX_COUNT, fmt: str = "<Q") -> int:
        n = int(self.scalar(fmt))
        if n > limit or n > self.size:
            raise GgufError(f"{NOT_VALID}: its header declares {n:,} {what}, more than it can hold")
        return n

    def string(self) -> bytes:
        return self.take(self.count("bytes in one text", MAX_STRING))

    def value(self, kind: int) -> object:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item = int(self.scalar("<I"))
            for _ in range(self.count("items in one list")):
                self.value(item)
            return None
        raise GgufError(f"{NOT_VALID}: its header has a value of unknown type {kind}")


def read_gguf_layout(path: str | Path) -> GgufLayout:
    """The header of the GGUF at `path` (no weights are read); GgufError in plain words when it is not one."""
    with open(path, "rb") as f:
        return read_gguf_header(f, os.path.getsize(path))


def read_gguf_header(f: BinaryIO, size: int) -> GgufLayout:
    """The header of the GGUF read from `f` (at its start, `size` bytes long); GgufError in plain words when it
    is not one: a malformed header never surfaces as a library's exception text."""
    try:
        return _read_header(f, size)
    except GgufError:
        raise
    except (struct.error, ValueError, OverflowError, UnicodeDecodeError, MemoryError):
        raise GgufError(f"{NOT_VALID}: its header cannot be read (it is damaged or not a GGUF file)") from None


def _read_header(f: BinaryIO, size: int) -> GgufLayout:
    import gguf

    r = _Reader(f, size)
    if r.take(4) != b"GGUF":
        raise GgufError(f"{NOT_VALID}: it does not start with the GGUF signature")
    version = int(r.scalar("<I"))
    if version not in (2, 3):
        raise GgufError(f"This GGUF file is of version {version}, which is not supported (versions 2 and 3 are)")
    n_tensors, n_kv = r.count("tensors"), r.count("metadata entries")
    alignment = 32
    for _ in range(n_kv):
        key, kind = r.string(), int(r.scalar("<I"))
        value = r.value(kind)
        if key == b"general.alignment" and isinstance(value, int) and value > 0:
            alignment = value
    parameters, ends, shapes = 0, 0, []
    for _ in range(n_tensors):
        name = r.string().decode("utf-8", errors="replace")
        dims = [int(r.scalar("<Q")) for _ in range(r.count("dimensions", MAX_DIMS, "<I"))]
        kind, offset = int(r.scalar("<I")), int(r.scalar("<Q"))
        try:
            block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise GgufError(f"{NOT_VALID}: a tensor has an unknown type ({kind})") from None
        elements = 1
        for d in dims:
            elements *= d
        parameters += elements
        shapes.append((name, tuple(dims)))
        ends = max(ends, offset + -(-elements // block) * block_bytes)
    start = -(-f.tell() // alignment) * alignment
    return GgufLayout(
        file_bytes=size, tensors=n_tensors, parameters=parameters, data_end=start + ends, shapes=tuple(shapes)
    )


def _size(n: int) -> str:
    for unit, scale in (("GB", GB), ("MB", 1024**2), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def available_memory_bytes() -> int:
    """Memory this machine can still give (MemAvailable), or its RAM where /proc/meminfo is not there."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def conversion_memory_bytes(layout: GgufLayout) -> int:
    """What converting needs: the dequantized model and the float32 model built beside it."""
    return 2 * layout.float32_bytes


def gguf_damage(layout: GgufLayout) -> str | None:
    """Why a GGUF with this header is no model whatever the machine (no tensors, or fewer bytes than it
    declares), or None; the upload checks this at once, the conversion again with the machine's limits."""
    if layout.tensors == 0:
        return "the GGUF file holds no tensors (no weights)"
    if layout.data_end > layout.file_bytes:
        return (
            f"the GGUF file declares {_size(layout.data_end)} of weights but holds only {_size(layout.file_bytes)}: "
            "it is damaged or not a real model"
        )
    return None


def gguf_refusal(layout: GgufLayout, *, free_disk: int, memory: int, max_parameters: int) -> str | None:
    """Why a GGUF with this header cannot be converted here (it lies about its size, or what it would become
    does not fit the disk, the memory or the parameter limit), or None."""
    damage = gguf_damage(layout)
    if damage:
        return damage
    if max_parameters and layout.parameters > max_parameters:
        return (
            f"the model has {layout.parameters / 1e9:.2f} billion parameters; the limit here is "
            f"{max_parameters / 1e9:.2f} billion (GGUF_MAX_PARAMETERS)"
        )
    if layout.float32_bytes > free_disk:
        return (
            f"converted to float32 the model needs {layout.float32_bytes / GB:.2f} GB of disk and only "
            f"{free_disk / GB:.2f} GB are free"
        )
    need = conversion_memory_bytes(layout)
    if need > memory:
        return (
            f"converting the model needs about {need / GB:.2f} GB of memory and only {memory / GB:.2f} GB "
            f"can be used (GGUF_CONVERT_MEMORY_MB and the memory free on the background worker)"
        )
    return None
