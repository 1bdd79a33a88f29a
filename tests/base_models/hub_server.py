"""A local stand-in for the Hugging Face Hub's file API (the machine has no internet): the two endpoints
the downloader uses, for repositories given as {repo id: {file name: bytes}}, and the three that
huggingface_hub's upload API calls (`HfApi.create_repo`, `upload_folder`), recording what arrives.

- GET /api/models/{id}/revision/{rev}?blobs=true -> {"sha", "siblings": [{"rfilename", "size"}]}
- GET /{id}/resolve/{rev}/{file} -> the file (safetensors redirected to /cdn/..., as the Hub sends large
  files to its CDN), with HTTP Range support; a file named in `drop_once` is cut off half-way, once.
- POST /api/repos/create {"name", "organization", "private"|"visibility"} -> {"url"}; recorded in `.created`
- POST /api/validate-yaml -> no errors (the README's front matter is checked before an upload)
- POST /api/models/{id}/preupload/{rev} -> every file "regular" (tiny files go inside the commit, as the Hub
  lets small text files go; no LFS or Xet transfer)
- POST /api/models/{id}/commit/{rev} (NDJSON: a header line, then one line per file, base64) -> the commit;
  the files land in `repos[id]` (so the downloader can read them back) and the commit in `.commits`."""

from __future__ import annotations

import base64
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
        created: list[dict] = []
        refused_tokens: set[str] = set()  # an Authorization of one of these is answered 401
        commits: list[dict] = []
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

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _json(self, value) -> None:
            self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

        def do_POST(self):
            Handler.log.append((self.path, "", self.headers.get("Authorization", "")))
            body, site = self._body(), f"http://{self.headers.get('Host')}"
            if self.headers.get("Authorization", "").removeprefix("Bearer ") in Handler.refused_tokens:
                return self._send(401, b'{"error": "Invalid credentials in Authorization header"}')
            if self.path == "/api/repos/create":
                asked = json.loads(body)
                Handler.created.append(asked)
                repo_id = f"{asked['organization']}/{asked['name']}" if asked.get("organization") else asked["name"]
                repos.setdefault(repo_id, {})
                return self._json({"url": f"{site}/{repo_id}", "name": repo_id, "id": repo_id})
            if self.path == "/api/validate-yaml":  # the README's YAML front matter, checked before the upload
                return self._json({"errors": [], "warnings": []})
            preupload = re.fullmatch(r"/api/models/(.+)/preupload/([^/]+)", self.path)
            if preupload:
                files = json.loads(body)["files"]
                return self._json(
                    {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            commit = re.fullmatch(r"/api/models/(.+)/commit/([^/]+)", self.path)
            if commit is None or commit.group(1) not in repos:
                return self._send(404, b'{"error": "Repository not found"}')
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            files = {
                line["value"]["path"]: base64.b64decode(line["value"]["content"])
                for line in lines
                if line["key"] == "file"
            }
            header = next((line["value"] for line in lines if line["key"] == "header"), {})
            repos[commit.group(1)].update(files)
            Handler.commits.append({"repo_id": commit.group(1), "header": header, "files": files})
            return self._json({"commitUrl": f"{site}/{commit.group(1)}/commit/{SHA}", "commitOid": SHA})

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
