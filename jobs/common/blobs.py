"""Product files behind one interface: a `Store` that is either this machine's MEDIA_ROOT (`LocalStore`) or
an S3-compatible bucket with MEDIA_ROOT as the machine's cache (`S3Store`, STORAGE_URL=s3://BUCKET/PREFIX,
through django-storages and boto3 with boto3's own AWS_* variables). The store is chosen from settings once.

There is one way to write: `with blobs.writing(name) as path:` yields a local path (write a file or a folder
there); on a clean exit it is renamed into place and published to the store, on an exception nothing is
published and the partial output is removed. Readers ask the store (`fetch`, `exists`, `is_file`, `size`,
`age`, `read_text`, `delete`, `download_response`), so any machine sees what any other wrote. Names are the
relative strings rows keep; `media_path` refuses one that would leave the media folder, locally and in the store.

Content under a name is written once (datasets, data snapshots, checkpoints, adapters, zips), so a local copy,
once there, is never stale.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.signals import setting_changed
from django.http import FileResponse, Http404, HttpResponseRedirect
from django.utils.http import content_disposition_header

from jobs.common.storage import media_path, media_relative

COMPLETE = ".complete"  # written last into a cached base model folder


def _hidden(parts) -> bool:
    """A dot-named entry is work in progress (a temp folder, a partial download): never published."""
    return any(part.startswith(".") for part in parts)


def _local_files(folder: Path) -> dict[str, Path]:
    """Relative posix name -> path of every publishable file under `folder`."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not _hidden(rel.parts):
            out[rel.as_posix()] = path
    return out


def local_bytes(path: Path) -> int:
    """Bytes of a local file, or of the publishable files in a local folder (0 when there is none): what
    `writing` will store for it, to check a quota before it does."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in _local_files(path).values()) if path.is_dir() else 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace(source: Path, target: Path) -> None:
    """Move `source` (a file or folder) to `target`, replacing what is there; a reader sees the old or the new."""
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


class Store:
    """Where product files live for every machine. Names are relative to MEDIA_ROOT; `publish` is called by
    `writing` alone, after the local copy under the name is whole."""

    def publish(self, name: str) -> None:
        raise NotImplementedError

    def mirror(self, name: str) -> None:
        """Make the stored folder hold what the local one holds now (pruned checkpoints leave it too)."""
        raise NotImplementedError

    def fetch(self, name: str) -> Path:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def is_file(self, name: str) -> bool:
        raise NotImplementedError

    def size(self, name: str) -> int | None:
        raise NotImplementedError

    def age(self, name: str) -> float | None:
        raise NotImplementedError

    def stored_bytes(self, name: str) -> int:
        raise NotImplementedError

    def read_text(self, name: str) -> str | None:
        raise NotImplementedError

    def touch(self, name: str) -> None:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def find(self, folder: str, name: str) -> list[str]:
        raise NotImplementedError

    def download_response(self, name: str, *, filename: str, content_type: str | None):
        raise NotImplementedError


class LocalStore(Store):
    """MEDIA_ROOT is the store: publishing is a no-op (`writing` already renamed the file into place) and
    reading returns the local path."""

    def publish(self, name: str) -> None:
        media_path(name)

    def mirror(self, name: str) -> None:
        media_path(name)

    def fetch(self, name: str) -> Path:
        return media_path(name)

    def exists(self, name: str) -> bool:
        return media_path(name).exists()

    def is_file(self, name: str) -> bool:
        return media_path(name).is_file()

    def size(self, name: str) -> int | None:
        try:
            return media_path(name).stat().st_size
        except FileNotFoundError:
            return None

    def stored_bytes(self, name: str) -> int:
        return local_bytes(media_path(name))

    def age(self, name: str) -> float | None:
        try:
            return time.time() - media_path(name).stat().st_mtime
        except FileNotFoundError:
            return None

    def read_text(self, name: str) -> str | None:
        try:
            return media_path(name).read_text()
        except FileNotFoundError:
            return None

    def touch(self, name: str) -> None:
        os.utime(media_path(name))

    def delete(self, name: str) -> None:
        _remove(media_path(name))

    def find(self, folder: str, name: str) -> list[str]:
        return [media_relative(p) for p in sorted(media_path(folder).glob(f"*/{name}"))]

    def download_response(self, name: str, *, filename: str, content_type: str | None):
        try:
            handle = open(media_path(name), "rb")
        except FileNotFoundError:
            raise Http404("the file is no longer stored") from None
        return FileResponse(handle, as_attachment=True, filename=filename, content_type=content_type)


class S3Store(Store):
    """The bucket holds the truth; MEDIA_ROOT is this machine's cache, filled by `fetch` (a file at a time,
    renamed into place). State reads (exists, size, age, small text files) ask the bucket."""

    @staticmethod
    def storage():
        from django.core.files.storage import storages

        return storages["files"]

    def _name(self, name: str) -> str:
        """The name as the backend takes it (checked by media_path first)."""
        media_path(name)
        return PurePosixPath(name).as_posix().strip("/")

    def key(self, name: str) -> str:
        """The bucket key of a name: the name under STORAGE_URL's prefix."""
        return self.storage()._normalize_name(self._name(name))

    def _objects(self, key: str):
        """The objects named `key` itself or under the folder `key/`."""
        return [
            o for o in self.storage().bucket.objects.filter(Prefix=key) if o.key == key or o.key.startswith(key + "/")
        ]

    def _upload(self, path: Path, key: str) -> None:
        self.storage().bucket.upload_file(str(path), key)

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            objects = [{"Key": key} for key in keys[start : start + 1000]]
            self.storage().bucket.delete_objects(Delete={"Objects": objects, "Quiet": True})

    def publish(self, name: str) -> None:
        path, key = media_path(name), self.key(name)
        if path.is_dir():
            for rel, file in _local_files(path).items():
                self._upload(file, f"{key}/{rel}")
        else:
            self._upload(path, key)

    def mirror(self, name: str) -> None:
        path, key = media_path(name), self.key(name)
        local = _local_files(path) if path.is_dir() else {}
        remote = {o.key[len(key) + 1 :]: o.size for o in self._objects(key) if o.key != key}
        for rel, file in local.items():
            if remote.get(rel) != file.stat().st_size:
                self._upload(file, f"{key}/{rel}")
        self._delete_keys([f"{key}/{rel}" for rel in remote if rel not in local])

    def fetch(self, name: str) -> Path:
        path = media_path(name)
        if path.is_file():
            return path
        key = self.key(name)
        for obj in self._objects(key):
            if obj.key == key:
                target = path
            else:
                rel = obj.key[len(key) + 1 :]
                if _hidden(PurePosixPath(rel).parts):
                    continue
                target = media_path(f"{name}/{rel}")
            if not target.is_file():
                _download(obj.key, target, self.storage().bucket)
        return path

    def exists(self, name: str) -> bool:
        key = self.key(name)
        return self.storage().exists(self._name(name)) or any(
            True for _ in self.storage().bucket.objects.filter(Prefix=key + "/").limit(1)
        )

    def is_file(self, name: str) -> bool:
        return self.storage().exists(self._name(name))

    def size(self, name: str) -> int | None:
        try:
            return self.storage().size(self._name(name))
        except FileNotFoundError:
            return None

    def stored_bytes(self, name: str) -> int:
        return sum(o.size for o in self._objects(self.key(name)))

    def age(self, name: str) -> float | None:
        from botocore.exceptions import ClientError

        try:
            modified = self.storage().bucket.Object(self.key(name)).last_modified
        except ClientError:
            return None
        return (dt.datetime.now(dt.UTC) - modified).total_seconds()

    def read_text(self, name: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return self.storage().bucket.Object(self.key(name)).get()["Body"].read().decode()
        except ClientError:
            return None

    def touch(self, name: str) -> None:
        text = self.read_text(name)
        if text is None:
            raise FileNotFoundError(name)
        self.storage().bucket.Object(self.key(name)).put(Body=text.encode())

    def delete(self, name: str) -> None:
        _remove(media_path(name))
        self._delete_keys([o.key for o in self._objects(self.key(name))])

    def find(self, folder: str, name: str) -> list[str]:
        key = self.key(folder)
        found = []
        for obj in self.storage().bucket.objects.filter(Prefix=key + "/"):
            parts = obj.key[len(key) + 1 :].split("/")
            if len(parts) == 2 and parts[1] == name:
                found.append(f"{folder}/{parts[0]}/{name}")
        return sorted(found)

    def download_response(self, name: str, *, filename: str, content_type: str | None):
        from botocore.exceptions import ClientError

        if settings.STORAGE_DOWNLOAD_REDIRECT:
            if not self.is_file(name):
                raise Http404("the file is no longer stored")
            params = {
                "ResponseContentDisposition": content_disposition_header(True, filename),
                **({"ResponseContentType": content_type} if content_type else {}),
            }
            return HttpResponseRedirect(
                self.storage().url(self._name(name), parameters=params, expire=settings.STORAGE_SIGNED_URL_SECONDS)
            )
        try:
            got = self.storage().bucket.Object(self.key(name)).get()
        except ClientError:
            raise Http404("the file is no longer stored") from None
        response = FileResponse(got["Body"], as_attachment=True, filename=filename, content_type=content_type)
        response["Content-Length"] = str(got["ContentLength"])
        return response


_stores: dict[str, Store] = {}


def store() -> Store:
    """The installation's store: S3Store with STORAGE_URL, else LocalStore (made once per setting)."""
    url = settings.STORAGE_URL or ""
    if url not in _stores:
        _stores[url] = S3Store() if url else LocalStore()
    return _stores[url]


def _forget_stores(*, setting, **kwargs) -> None:
    if setting in ("STORAGE_URL", "STORAGES"):
        _stores.clear()


setting_changed.connect(_forget_stores)


def enabled() -> bool:
    """Whether product files live in an object store (STORAGE_URL is set)."""
    return isinstance(store(), S3Store)


# --- writing: the one way ----------------------------------------------------------------------------


@contextmanager
def writing(name: str, *, in_place: bool = False) -> Iterator[Path]:
    """Write the file or folder `name`: yields a local path to write it at; on a clean exit it is put in place
    and published to the store, on an exception nothing is published and the partial output is removed.

    By default the path is a hidden temporary sibling, renamed over `name` on exit (a reader never sees half
    of it). `in_place=True` yields `name`'s own local path, for a writer that resumes from what is already
    there or for output the engine wrote in place; on an exception only a path the block created is removed."""
    final = media_path(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    if in_place:
        existed = final.exists()
        try:
            yield final
        except BaseException:
            if not existed:
                _remove(final)
            raise
    else:
        tmp = final.with_name(f".{final.name}.w-{uuid.uuid4().hex[:12]}")
        try:
            yield tmp
            if not tmp.exists():
                raise FileNotFoundError(f"nothing was written for {name}")
            _replace(tmp, final)
        finally:
            _remove(tmp)
    store().publish(name)


def write_text(name: str, text: str) -> None:
    """A small text file, written whole (a reader never sees half of it) and published."""
    with writing(name) as path:
        path.write_text(text)


def mirror(name: str) -> None:
    """For a folder the engine keeps changing in place (checkpoints, pruned as it goes): make the store hold
    what the local folder holds now."""
    store().mirror(name)


# --- reading -----------------------------------------------------------------------------------------


def fetch(name: str) -> Path:
    """The local path of the file or folder `name`, downloading what this machine lacks (the local path,
    absent, when nothing is stored under the name)."""
    return store().fetch(name)


def exists(name: str) -> bool:
    """Whether a file or folder is stored under `name`."""
    return store().exists(name)


def is_file(name: str) -> bool:
    """Whether a file (not a folder) is stored under `name`."""
    return store().is_file(name)


def size(name: str) -> int | None:
    """The stored file's size in bytes, None when there is none."""
    return store().size(name)


def stored_bytes(*names: str) -> int:
    """Bytes stored under the files or folders `names` (every file in a folder; 0 for a name with nothing
    stored): what a quota charges, measured from the store itself."""
    return sum(store().stored_bytes(name) for name in names if name)


def age(name: str) -> float | None:
    """Seconds since the stored file was last written (or touched); None when there is none."""
    return store().age(name)


def read_text(name: str) -> str | None:
    """A small stored text file's content, None when there is none (read from the store each time)."""
    return store().read_text(name)


def touch(name: str) -> None:
    """Stamp the stored file as written now; FileNotFoundError when it is gone."""
    store().touch(name)


def delete(name: str) -> None:
    """Remove the file or folder `name` here and from the store."""
    store().delete(name)


def find(folder: str, name: str) -> list[str]:
    """The names `folder/<entry>/name` that are stored."""
    return store().find(folder, name)


def download_response(name: str, *, filename: str, content_type: str | None = None):
    """A stored file as an attachment: from the local folder, or streamed from the store, or (with
    STORAGE_DOWNLOAD_REDIRECT) a redirect to a signed URL valid STORAGE_SIGNED_URL_SECONDS. A missing
    file is a 404, never a 500."""
    return store().download_response(name, filename=filename, content_type=content_type)


def _download(key: str, path: Path, bucket) -> None:
    """Download a bucket's object to a temp name beside `path`, then rename: a local file is always whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.dl-{uuid.uuid4().hex[:8]}")
    try:
        bucket.download_file(key, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- base models kept in the store --------------------------------------------------------------

_models_ready: set[str] = set()
_models_lock = threading.Lock()


def store_url(relative: str) -> str:
    """s3://BUCKET/KEY of the name `relative` in the store (a published base model folder is registered by it,
    so every machine finds it through `model_local_path`)."""
    return f"s3://{S3Store.storage().bucket_name}/{S3Store().key(relative)}"


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
    bucket_name, _, prefix = str(path)[len("s3://") :].partition("/")
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
        bucket = S3Store.storage().connection.Bucket(bucket_name)
        count = 0
        for obj in bucket.objects.filter(Prefix=prefix + "/"):
            name = obj.key[len(prefix) + 1 :]
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
