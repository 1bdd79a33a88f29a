"""File downloads: one helper for every page and API that hands out a stored file."""
from __future__ import annotations

import re
from pathlib import Path

from django.http import FileResponse, Http404


def download_name(text: str, suffix: str) -> str:
    """A safe attachment name from user text (a job or dataset name) and a fixed suffix."""
    return (re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "download") + suffix


def file_download(path: Path, *, filename: str, content_type: str | None = None) -> FileResponse:
    """Stream a stored file as an attachment; a missing file is a 404, never a 500."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise Http404("the file is no longer stored") from None
    return FileResponse(handle, as_attachment=True, filename=filename, content_type=content_type)
