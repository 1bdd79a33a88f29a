"""Reading a model repository from the Hugging Face Hub (or any server that speaks its file API).

Only what the downloader needs: the revision's file listing with sizes
(`GET /api/models/{id}/revision/{rev}?blobs=true`) and the files themselves
(`GET /{id}/resolve/{rev}/{file}`, redirects followed). Every connection goes through
`jobs.common.outbound`, so a Hub address (or a redirect) that points into this server's network is refused
unless an administrator allowed it (HUB_ALLOWED_HOSTS). A download is resumable: bytes land in
`<file>.part` and an interrupted transfer continues with an HTTP Range request.

Only safetensors weights and plain tokenizer/config files are fetched: pickle-based weights
(`.bin`, `.pt`, ...) are never downloaded, and a repository whose config needs code of its own
(`auto_map`, an architecture transformers does not ship) is refused before any weight is fetched."""

from __future__ import annotations

import http.client
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

from jobs.common.exceptions import ProductError
from jobs.common.outbound import OutboundError, OutboundPolicy, failure_category, outbound_connection

log = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
# Files are taken from the repository's top folder only, with plain names (no path can be built from them).
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "model.safetensors.index.json",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_REDIRECTS = 5
MAX_JSON_BYTES = 4 * 1024 * 1024
CHUNK = 1024 * 1024
ATTEMPTS = 4  # per file: a dropped connection resumes where it stopped


class HubError(ProductError):
    """The Hub refused, failed, or the repository cannot be used; `field` names the input it is about."""

    field = "hub_id"


@dataclass(frozen=True)
class RepoFile:
    name: str
    size: int


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise HubError(f"{repo_id!r} is not a Hugging Face model id such as HuggingFaceTB/SmolLM2-135M-Instruct")
    return repo_id


def check_revision(revision: str) -> str:
    if not isinstance(revision, str) or not REVISION.fullmatch(revision) or ".." in revision:
        raise HubError(f"{revision!r} is not a branch, tag or commit", field="revision")
    return revision


def files_to_fetch(files: list[RepoFile]) -> list[RepoFile]:
    """The repository's safetensors weights and config/tokenizer files; HubError when it has no
    safetensors weights (pickle-based weights are never loaded)."""
    top = [f for f in files if _FILE_NAME.fullmatch(f.name)]
    weights = [f for f in top if f.name.endswith(".safetensors")]
    if not weights:
        pickled = sorted(f.name for f in files if f.name.endswith(PICKLE_SUFFIXES))
        found = f" (it has {', '.join(pickled[:3])})" if pickled else ""
        raise HubError(
            f"the repository has no safetensors weights{found}: only safetensors models are "
            f"downloaded, pickle-based weights (.bin, .pt) are never loaded"
        )
    if "config.json" not in {f.name for f in top}:
        raise HubError("the repository has no config.json: not a transformers model")
    return weights + [f for f in top if f.name in CONFIG_FILES]


def remote_code_refusal(config: dict, *, where: str = "config.json") -> str | None:
    """Why a config needs code from the repository (which is never run), or None."""
    if not isinstance(config, dict):
        return f"{where} is not a JSON object"
    if config.get("auto_map"):
        return (
            f"the model needs remote code ({where} has auto_map: "
            f"{', '.join(sorted(map(str, config['auto_map'])))[:200]}); code from a repository is never run"
        )
    if where != "config.json":
        return None
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        return (
            f"the model needs remote code: model_type {model_type!r} is not built into transformers, "
            f"and code from a repository is never run"
        )
    for arch in config.get("architectures") or []:
        if not isinstance(arch, str) or not hasattr(transformers, arch):
            return (
                f"the model needs remote code: architecture {arch!r} is not built into transformers, "
                f"and code from a repository is never run"
            )
    return None


class HubClient:
    """Reads one repository revision over HTTP(S), pinned to vetted addresses (jobs.common.outbound)."""

    def __init__(self, endpoint: str, *, token: str = "", policy: OutboundPolicy, timeout: float = 30.0):
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.policy = policy
        self.timeout = timeout

    # -- requests ------------------------------------------------------------------------------

    def _open(self, url: str, headers: dict[str, str]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """GET `url`, following redirects (each target vetted again); the token goes to the Hub's own host only."""
        own_host = urlsplit(self.endpoint).netloc
        for _ in range(MAX_REDIRECTS + 1):
            conn, path = outbound_connection(url, timeout=self.timeout, policy=self.policy)
            sent = dict(headers, **{"User-Agent": "lora-studio", "Accept-Encoding": "identity"})
            if self.token and urlsplit(url).netloc == own_host:
                sent["Authorization"] = f"Bearer {self.token}"
            conn.request("GET", path, headers=sent)
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location"))
                response.read(64 * 1024)
                conn.close()
                continue
            return conn, response
        raise HubError("the Hub redirected too many times")

    def _refusal(self, status: int, what: str) -> HubError:
        if status == 401 or status == 403:
            return HubError(
                f"{what}: access denied (HTTP {status}); a gated or private model needs a token that may read it",
                field="token",
            )
        if status == 404:
            return HubError(f"{what}: not found on the Hub (HTTP 404); check the id and the revision")
        return HubError(f"{what}: the Hub answered HTTP {status}")

    def _url(self, *parts: str) -> str:
        return self.endpoint + "/" + "/".join(quote(p, safe="/") for p in parts)

    def repo_files(self, repo_id: str, revision: str) -> tuple[str, list[RepoFile]]:
        """(commit sha, files with sizes) of the revision."""
        data = self._json(self._url("api/models", repo_id, "revision", revision) + "?blobs=true", repo_id)
        siblings = data.get("siblings") if isinstance(data, dict) else None
        if not isinstance(siblings, list):
            raise HubError(f"{repo_id}: the Hub's file listing has no siblings")
        files = []
        for s in siblings:
            if isinstance(s, dict) and isinstance(s.get("rfilename"), str):
                size = s.get("size") or (s.get("lfs") or {}).get("size") or 0
                files.append(RepoFile(s["rfilename"], int(size) if isinstance(size, int) else 0))
        return str(data.get("sha") or revision), files

    def file_json(self, repo_id: str, revision: str, name: str) -> dict:
        return self._json(self._url(repo_id, "resolve", revision, name), f"{repo_id}/{name}")

    def _json(self, url: str, what: str):
        try:
            conn, response = self._open(url, {"Accept": "application/json"})
            try:
                if response.status != 200:
                    raise self._refusal(response.status, what)
                body = response.read(MAX_JSON_BYTES + 1)
            finally:
                conn.close()
        except OutboundError as exc:
            raise HubError(f"{what}: cannot reach the Hub ({exc.category})") from None
        except (OSError, http.client.HTTPException) as exc:
            raise HubError(f"{what}: cannot reach the Hub ({failure_category(exc)})") from None
        if len(body) > MAX_JSON_BYTES:
            raise HubError(f"{what}: answer too large")
        try:
            return json.loads(body)
        except ValueError:
            raise HubError(f"{what}: the Hub's answer is not JSON") from None

    # -- files ---------------------------------------------------------------------------------

    def download(
        self,
        repo_id: str,
        revision: str,
        file: RepoFile,
        folder: Path,
        on_bytes: Callable[[int], None] = lambda n: None,
    ) -> Path:
        """Fetch one file into `folder`, resuming `<name>.part` with a Range request after an interruption
        (within this call, and across calls: a restarted worker continues the same file)."""
        dest, part = folder / file.name, folder / f"{file.name}.part"
        if dest.is_file() and dest.stat().st_size == file.size:
            on_bytes(file.size)
            return dest
        url = self._url(repo_id, "resolve", revision, file.name)
        last_error = ""
        for _attempt in range(ATTEMPTS):
            have = part.stat().st_size if part.is_file() else 0
            if have:
                on_bytes(have)  # what an earlier attempt already stored counts as done
            if file.size and have == file.size:
                break
            try:
                self._fetch_into(url, part, have, file, on_bytes)
                break
            except OutboundError as exc:
                raise HubError(f"{file.name}: cannot reach the Hub ({exc.category})") from None
            except (OSError, http.client.HTTPException) as exc:
                last_error = failure_category(exc)
                log.info("download of %s interrupted (%s); resuming", file.name, exc)
                on_bytes(-(part.stat().st_size if part.is_file() else 0))  # recounted at the next attempt
        else:
            raise HubError(f"{file.name}: the download kept failing ({last_error})")
        size = part.stat().st_size
        if file.size and size != file.size:
            raise HubError(f"{file.name}: got {size} bytes, the Hub listed {file.size}")
        part.replace(dest)
        return dest

    def _fetch_into(self, url: str, part: Path, have: int, file: RepoFile, on_bytes) -> None:
        headers = {"Range": f"bytes={have}-"} if have else {}
        conn, response = self._open(url, headers)
        try:
            if response.status == 416 and have:  # nothing past what we have: the file is complete
                return
            if response.status == 200 and have:
                on_bytes(-have)  # the server ignored the Range: start over
                have = 0
            elif response.status not in (200, 206):
                raise self._refusal(response.status, file.name)
            declared = response.getheader("Content-Length")
            expected = int(declared) if declared and declared.isdigit() else None
            received = 0
            with open(part, "r+b" if have else "wb") as out:
                out.seek(have)
                out.truncate()
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    on_bytes(len(chunk))
                    if file.size and have + received > file.size:
                        raise HubError(f"{file.name}: larger than the {file.size} bytes the Hub listed")
            if expected is not None and received < expected:
                raise http.client.IncompleteRead(b"", expected - received)
        finally:
            conn.close()
