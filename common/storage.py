"""Where product files live: paths under MEDIA_ROOT, stored in rows as relative strings."""
from __future__ import annotations

from pathlib import Path

from django.conf import settings


def media_path(relative: str) -> Path:
    """The absolute path of a file stored as `relative` (to MEDIA_ROOT) in a row."""
    return Path(settings.MEDIA_ROOT) / relative


def media_relative(path: Path | str) -> str:
    """The inverse of media_path: how a file under MEDIA_ROOT is recorded in a row."""
    return str(Path(path).relative_to(settings.MEDIA_ROOT))
