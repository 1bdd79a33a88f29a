"""File downloads: one helper for every page and API that hands out a stored file."""

from __future__ import annotations

import re

from jobs.common import blobs


def download_name(text: str, suffix: str) -> str:
    """A safe attachment name from user text (a job or dataset name) and a fixed suffix."""
    return (re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "download") + suffix


def file_download(relative: str, *, filename: str, content_type: str | None = None):
    """Stream a stored file (its name under MEDIA_ROOT, as rows keep it) as an attachment, from the local
    folder or the object store; a missing file is a 404, never a 500."""
    return blobs.download_response(relative, filename=filename, content_type=content_type)
