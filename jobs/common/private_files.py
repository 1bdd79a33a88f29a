"""Files only their owner may read (a secret key, a password), private from the first byte."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def private_file_create(path: Path, text: str) -> None:
    """Write `text` to a new file at `path` with mode 0600; FileExistsError if `path` exists.

    The file never exists with wider permissions, nor half-written: the text goes to a temporary
    file opened 0600 from the start, which is then linked into place (linking fails if another
    process created `path` first).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
