"""A local stand-in for the Hugging Face Hub's file API (the machine has no internet): the two endpoints
the downloader uses, for repositories given as {repo id: {file name: bytes}}.

- GET /api/models/{id}/revision/{rev}?blobs=true -> {"sha", "siblings": [{"rfilename", "size"}]}
- GET /{id}/resolve/{rev}/{file} -> the file (safetensors redirected to /cdn/..., as the Hub sends large
  files to its CDN), with HTTP Range support; a file named in `drop_once` is cut off half-way, once."""

from __future__ import annotations

import http.server
import json
import re
import threading
from pathlib import Path

SHA = "0123456789abcdef0123456789abcdef01234567"


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def hub_handler(repos: dict[str, dict[str, bytes]], *, drop_once: set[str] = frozenset()):
    """A request handler class serving `repos`; `.log` records (path, Range, Authorization) of each request,
    `.dropped` the files already cut off (clear both to start over)."""
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        log: list[tuple[str, str, str]] = []
        dropped: set[str] = set()
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            Handler.log.append((self.path, self.headers.get("Range", ""), self.headers.get("Authorization", "")))
            listing = re.fullmatch(r"/api/models/(.+)/revision/([^/?]+)(\?.*)?", self.path)
            if listing:
                repo = repos.get(listing.group(1))
                if repo is None:
                    return self._send(404, b'{"error": "Repository not found"}')
                body = json.dumps(
                    {
                        "id": listing.group(1),
                        "sha": SHA,
                        "siblings": [{"rfilename": n, "size": len(b)} for n, b in repo.items()],
                    }
                )
                return self._send(200, body.encode(), {"Content-Type": "application/json"})
            resolve = re.fullmatch(r"/(.+)/resolve/([^/]+)/([^/]+)", self.path)
            if resolve:
                repo_id, _rev, name = resolve.groups()
                if name.endswith(".safetensors"):
                    return self._send(302, b"", {"Location": f"/cdn/{repo_id}/{name}"})
                return self._file(repo_id, name)
            cdn = re.fullmatch(r"/cdn/(.+)/([^/]+)", self.path)
            if cdn:
                return self._file(*cdn.groups())
            self._send(404)

        def _file(self, repo_id: str, name: str):
            data = repos.get(repo_id, {}).get(name)
            if data is None:
                return self._send(404)
            start = 0
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if ranged:
                start = int(ranged.group(1))
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            with lock:
                drop = name in drop_once and name not in Handler.dropped
                Handler.dropped.add(name) if drop else None
            self.send_response(206 if ranged else 200)
            self.send_header("Content-Length", str(len(data) - start))
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if drop:  # the connection breaks half-way through the body
                self.wfile.write(data[start : start + (len(data) - start) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(data[start:])

    return Handler
