"""Where product files live: paths under MEDIA_ROOT, stored in rows as relative strings."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation


def media_path(relative: str) -> Path:
    """The absolute path of a file stored as `relative` (to MEDIA_ROOT) in a row; a stored path that
    would lead outside MEDIA_ROOT (`..`, an absolute path, a link out) is refused."""
    root = Path(settings.MEDIA_ROOT).resolve()
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise SuspiciousFileOperation(f"stored path {relative!r} leaves the media folder")
    return path


def media_relative(path: Path | str) -> str:
    """The inverse of media_path: how a file under MEDIA_ROOT is recorded in a row."""
    return str(Path(path).relative_to(settings.MEDIA_ROOT))
