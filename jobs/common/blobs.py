"""Product files in object storage, with each machine's MEDIA_ROOT as its local working copy.

Without STORAGE_URL every function here works on the local folder alone, as the product always
has. With STORAGE_URL=s3://BUCKET/PREFIX (an S3-compatible store reached through django-storages
and boto3, configured by boto3's own AWS_* variables) the store holds the truth and MEDIA_ROOT is
a cache: a writer `publish`es a file or folder after writing it, a reader `fetch`es it (downloaded
once, when missing), and the state a page shows (exists, size, age, small text files) is read from
the store, so any machine sees what any other wrote. Names are the relative strings rows keep;
`media_path` still refuses one that would leave the media folder, locally and in the store.

Content under a name is written once (datasets, data snapshots, checkpoints, adapters, zips), so a
local copy, once there, is never stale; the few small files that change (the merge marker) are read
from the store each time.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
import time
import uuid
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.http import FileResponse, Http404, HttpResponseRedirect
from django.utils.http import content_disposition_header

from jobs.common.storage import media_path, media_relative

COMPLETE = ".complete"  # written last into a cached base model folder


def enabled() -> bool:
    """Whether product files live in an object store (STORAGE_URL is set)."""
    return bool(settings.STORAGE_URL)


def _storage():
    from django.core.files.storage import storages

    return storages["files"]


def _name(relative: str) -> str:
    """A name under MEDIA_ROOT as the store's backend takes it (checked by media_path first)."""
    media_path(relative)
    return PurePosixPath(relative).as_posix().strip("/")


def _key(relative: str) -> str:
    """The store key of a name under MEDIA_ROOT: the name under STORAGE_URL's prefix."""
    return _storage()._normalize_name(_name(relative))


def _objects(key: str):
    """The store's objects named `key` itself or under the folder `key/`."""
    return [o for o in _storage().bucket.objects.filter(Prefix=key) if o.key == key or o.key.startswith(key + "/")]


def _hidden(parts) -> bool:
    """A dot-named entry is work in progress (a temp folder, a partial download): never published."""
    return any(part.startswith(".") for part in parts)


def _upload(path: Path, key: str) -> None:
    _storage().bucket.upload_file(str(path), key)


def _download(key: str, path: Path, bucket=None) -> None:
    """Download to a temp name beside `path`, then rename: a local file is always whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.dl-{uuid.uuid4().hex[:8]}")
    try:
        (bucket or _storage().bucket).download_file(key, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _local_files(folder: Path) -> dict[str, Path]:
    """Relative posix name -> path of every published-worthy file under `folder`."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not _hidden(rel.parts):
            out[rel.as_posix()] = path
    return out


def publish(relative: str) -> None:
    """Copy the local file or folder `relative` to the store, after it has been written whole."""
    if not enabled():
        return
    path, key = media_path(relative), _key(relative)
    if path.is_dir():
        for name, file in _local_files(path).items():
            _upload(file, f"{key}/{name}")
    else:
        _upload(path, key)


def mirror(relative: str) -> None:
    """Make the store's copy of the local folder `relative` hold what it holds now: upload the files
    the store lacks (or holds at another size), remove the ones gone locally (pruned checkpoints)."""
    if not enabled():
        return
    path, key = media_path(relative), _key(relative)
    local = _local_files(path) if path.is_dir() else {}
    remote = {o.key[len(key) + 1:]: o.size for o in _objects(key) if o.key != key}
    for name, file in local.items():
        if remote.get(name) != file.stat().st_size:
            _upload(file, f"{key}/{name}")
    gone = [{"Key": f"{key}/{name}"} for name in remote if name not in local]
    for start in range(0, len(gone), 1000):
        _storage().bucket.delete_objects(Delete={"Objects": gone[start:start + 1000], "Quiet": True})


def fetch(relative: str) -> Path:
    """The local path of the file or folder `relative`, downloading from the store what this machine
    lacks. Without a store (or when nothing is stored under the name) it is just media_path."""
    path = media_path(relative)
    if not enabled() or path.is_file():
        return path
    key = _key(relative)
    for obj in _objects(key):
        if obj.key == key:
            target = path
        else:
            name = obj.key[len(key) + 1:]
            if _hidden(PurePosixPath(name).parts):
                continue
            target = media_path(f"{relative}/{name}")
        if not target.is_file():
            _download(obj.key, target)
    return path


def exists(relative: str) -> bool:
    """Whether a file or folder is stored under `relative` (in the store when there is one)."""
    if not enabled():
        return media_path(relative).exists()
    key = _key(relative)
    return _storage().exists(_name(relative)) or any(True for _ in _storage().bucket.objects.filter(Prefix=key + "/").limit(1))


def is_file(relative: str) -> bool:
    """Whether a file (not a folder) is stored under `relative`."""
    if not enabled():
        return media_path(relative).is_file()
    return _storage().exists(_name(relative))


def size(relative: str) -> int | None:
    """The stored file's size in bytes, None when there is none."""
    if not enabled():
        try:
            return media_path(relative).stat().st_size
        except FileNotFoundError:
            return None
    try:
        return _storage().size(_name(relative))
    except FileNotFoundError:
        return None


def age(relative: str) -> float | None:
    """Seconds since the stored file was last written (or touched); None when there is none."""
    if not enabled():
        try:
            return time.time() - media_path(relative).stat().st_mtime
        except FileNotFoundError:
            return None
    from botocore.exceptions import ClientError

    try:
        modified = _storage().bucket.Object(_key(relative)).last_modified
    except ClientError:
        return None
    return (dt.datetime.now(dt.timezone.utc) - modified).total_seconds()


def read_text(relative: str) -> str | None:
    """A small stored text file's content, None when there is none (read from the store each time)."""
    if not enabled():
        try:
            return media_path(relative).read_text()
        except FileNotFoundError:
            return None
    from botocore.exceptions import ClientError

    try:
        return _storage().bucket.Object(_key(relative)).get()["Body"].read().decode()
    except ClientError:
        return None


def write_text(relative: str, text: str) -> None:
    """Write a small text file atomically (a reader never sees half of it), and publish it."""
    path = media_path(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)
    if enabled():
        _storage().bucket.Object(_key(relative)).put(Body=text.encode())


def touch(relative: str) -> None:
    """Stamp the stored file as written now; FileNotFoundError when it is gone (in the store when
    there is one), so a heartbeat stops once its file has been removed."""
    if not enabled():
        os.utime(media_path(relative))
        return
    text = read_text(relative)
    if text is None:
        raise FileNotFoundError(relative)
    _storage().bucket.Object(_key(relative)).put(Body=text.encode())


def delete(relative: str) -> None:
    """Remove the file or folder `relative` here and from the store."""
    path = media_path(relative)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    if enabled():
        keys = [{"Key": o.key} for o in _objects(_key(relative))]
        for start in range(0, len(keys), 1000):
            _storage().bucket.delete_objects(Delete={"Objects": keys[start:start + 1000], "Quiet": True})


def find(folder: str, name: str) -> list[str]:
    """The names `folder/<entry>/name` that are stored, e.g. every job's merge marker."""
    if not enabled():
        return [media_relative(p) for p in sorted(media_path(folder).glob(f"*/{name}"))]
    key = _key(folder)
    found = []
    for obj in _storage().bucket.objects.filter(Prefix=key + "/"):
        parts = obj.key[len(key) + 1:].split("/")
        if len(parts) == 2 and parts[1] == name:
            found.append(f"{folder}/{parts[0]}/{name}")
    return sorted(found)


def download_response(relative: str, *, filename: str, content_type: str | None = None):
    """A stored file as an attachment: from the local folder, or streamed from the store, or (with
    STORAGE_DOWNLOAD_REDIRECT) a redirect to a signed URL valid STORAGE_SIGNED_URL_SECONDS. A missing
    file is a 404, never a 500."""
    if not enabled():
        try:
            handle = open(media_path(relative), "rb")
        except FileNotFoundError:
            raise Http404("the file is no longer stored") from None
        return FileResponse(handle, as_attachment=True, filename=filename, content_type=content_type)
    from botocore.exceptions import ClientError

    if settings.STORAGE_DOWNLOAD_REDIRECT:
        if not is_file(relative):
            raise Http404("the file is no longer stored")
        params = {"ResponseContentDisposition": content_disposition_header(True, filename),
                  **({"ResponseContentType": content_type} if content_type else {})}
        return HttpResponseRedirect(_storage().url(_name(relative), parameters=params,
                                                   expire=settings.STORAGE_SIGNED_URL_SECONDS))
    try:
        got = _storage().bucket.Object(_key(relative)).get()
    except ClientError:
        raise Http404("the file is no longer stored") from None
    response = FileResponse(got["Body"], as_attachment=True, filename=filename, content_type=content_type)
    response["Content-Length"] = str(got["ContentLength"])
    return response


# --- base models kept in the store --------------------------------------------------------------

_models_ready: set[str] = set()
_models_lock = threading.Lock()


def store_url(relative: str) -> str:
    """s3://BUCKET/KEY of the name `relative` in the store (a published base model folder is registered by it,
    so every machine finds it through `model_local_path`)."""
    return f"s3://{_storage().bucket_name}/{_key(relative)}"


def is_store_url(path: str) -> bool:
    return str(path).startswith("s3://")


def model_local_path(path: str, *, only: tuple[str, ...] = ()) -> str:
    """A base model's local folder: `path` itself, or for s3://BUCKET/PREFIX the machine's cached copy
    under MODEL_CACHE_DIR, downloaded on first use (a file at a time, each renamed into place, and a
    `.complete` marker last, so an interrupted download resumes with what is missing).

    `only`: just these top-level files (a tokenizer's, for the web side), not the weights; a later full
    call fetches the rest."""
    if not is_store_url(path):
        return str(path)
    bucket_name, _, prefix = str(path)[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    if not bucket_name or not prefix:
        raise ValueError(f"{path}: give a store folder as s3://BUCKET/PREFIX")
    if not enabled():
        raise ValueError(f"{path}: a base model in object storage needs STORAGE_URL (and the AWS_* settings)")
    root = Path(settings.MODEL_CACHE_DIR).resolve()
    folder = (root / bucket_name / prefix).resolve()
    if root not in folder.parents:
        raise SuspiciousFileOperation(f"{path} leaves the model cache")
    ready_key = f"{folder}|{','.join(only)}" if only else str(folder)
    with _models_lock:
        if ready_key in _models_ready or str(folder) in _models_ready or (folder / COMPLETE).is_file():
            _models_ready.add(ready_key)
            return str(folder)
        bucket = _storage().connection.Bucket(bucket_name)
        count = 0
        for obj in bucket.objects.filter(Prefix=prefix + "/"):
            name = obj.key[len(prefix) + 1:]
            target = (folder / name).resolve()
            if not name or obj.key.endswith("/") or folder not in target.parents:
                continue
            count += 1
            if only and name not in only:
                continue
            if not target.is_file() or target.stat().st_size != obj.size:
                _download(obj.key, target, bucket)
        if not count:
            raise FileNotFoundError(f"{path}: nothing is stored under this prefix")
        if not only:
            (folder / COMPLETE).write_text(path)
        _models_ready.add(ready_key)
    return str(folder)
