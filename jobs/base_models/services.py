"""Writes for the base-model catalogue: register a folder, download from the Hub, convert a GGUF upload,
delete. Staff add shared models; with USER_MODELS on, every user may add models private to them."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, ProtectedError, Q

from jobs.accounts.limits import QuotaExceeded, check_limit, storage_used
from jobs.base_models.hub import HubClient, HubError, check_repo_id, check_revision, files_to_fetch, remote_code_refusal
from jobs.base_models.hub_tokens import hub_token_forget, hub_token_keep, hub_token_of
from jobs.base_models.models import BaseModel, ModelSource, ModelStatus
from jobs.common import blobs, queue
from jobs.common.blobs import is_store_url, model_local_path
from jobs.common.errors import failure_category
from jobs.common.exceptions import ProductError, StateError
from jobs.common.outbound import OutboundPolicy
from jobs.common.storage import media_path
from worker.errors import InputError
from worker.gguf_convert import convert_gguf_limited
from worker.modeling import context_length, describe_model

log = logging.getLogger(__name__)
GGUF_MAGIC = b"GGUF"
PROGRESS_EVERY_S = 0.5
GB = 1024**3


class NotAllowed(ProductError):
    status = 403
    field = "source"


def base_model_register(*, name: str, path: str | Path, owner=None, source: str = ModelSource.FOLDER) -> BaseModel:
    """Describe a model folder (on the meta device) and record it; idempotent by name. `path` is a local
    folder or a store prefix s3://BUCKET/PREFIX (downloaded into this machine's model cache to describe)."""
    local = model_local_path(str(path))
    refusal = _folder_remote_code_refusal(Path(local))
    if refusal:
        raise ProductError(refusal, field="path")
    info = describe_model(local)
    if info["chat_template_problem"]:
        raise ProductError(f"the model's chat template is refused: {info['chat_template_problem']}", field="path")
    model, _ = BaseModel.objects.update_or_create(
        name=name,
        owner=owner,
        defaults=dict(
            path=str(path),
            architecture=info["architecture"],
            parameters=info["parameters"],
            linear_modules=info["linear_modules"],
            has_chat_template=info["has_chat_template"],
            context_length=context_length(local),
            source=source,
            status=ModelStatus.READY,
            error="",
        ),
    )
    return model


def _folder_remote_code_refusal(folder: Path) -> str | None:
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return f"{name} is not readable JSON"
        refusal = remote_code_refusal(data, where=name)
        if refusal:
            return refusal
    return None


# -- who may add what ----------------------------------------------------------------------------


def can_add_models(user) -> bool:
    """Staff always; every signed-in user when USER_MODELS is on (their models are private to them)."""
    return bool(user.is_staff or settings.USER_MODELS)


def _owner_for(user):
    """Staff add shared models; other users private ones."""
    if not can_add_models(user):
        raise NotAllowed(
            "only staff add base models here (an administrator can let every user add private ones with USER_MODELS=1)"
        )
    return None if user.is_staff else user


def _check_name(name: str, *, owner) -> str:
    """A free name for a model of `owner` (None: shared). Only names the owner can see are taken: their own
    and the shared ones; another user's private names are not (nor revealed)."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ProductError("give a name of 1 to 200 characters", field="name")
    taken = Q(owner__isnull=True) if owner is None else Q(owner__isnull=True) | Q(owner=owner)
    if BaseModel.objects.filter(taken, name=name).exists():
        raise ProductError(f"a base model named {name!r} already exists; choose another name", field="name")
    return name


def _create(**fields) -> BaseModel:
    try:
        with transaction.atomic():
            return BaseModel.objects.create(**fields)
    except IntegrityError:
        raise ProductError(
            f"a base model named {fields['name']!r} already exists; choose another name", field="name"
        ) from None


def model_relative(model: BaseModel) -> str:
    """The media name of a model this product downloads or converts."""
    return f"base-models/{model.id}"


def base_gguf_name(model: BaseModel, quantization: str) -> str:
    """The media name of the model's own GGUF (made once by the first GGUF LoRA export on it, then reused)."""
    return f"base-gguf/{model.id}/model-{quantization}.gguf"


def model_folder(model: BaseModel) -> Path:
    """Where a downloaded or converted model is made (under MEDIA_ROOT, on the background worker's disk)."""
    return media_path(model_relative(model))


def _finish(model: BaseModel, relative: str, **fields) -> None:
    """Describe the finished folder (written and published through blobs.writing) and mark the model ready. With
    an object store it is registered by its store URL, so a train or chat worker on another machine fetches it on
    first use."""
    folder = media_path(relative)
    info = describe_model(str(folder))
    if info["chat_template_problem"]:
        raise ProductError(f"the model's chat template is refused: {info['chat_template_problem']}")
    ctx = context_length(str(folder))
    path = blobs.store_url(relative) if blobs.enabled() else str(folder)
    BaseModel.objects.filter(id=model.id).update(
        path=path,
        architecture=info["architecture"],
        parameters=info["parameters"],
        linear_modules=info["linear_modules"],
        has_chat_template=info["has_chat_template"],
        context_length=ctx,
        status=ModelStatus.READY,
        error="",
        stored_bytes=blobs.stored_bytes(model_relative(model)),
        **fields,
    )


# -- a local folder --------------------------------------------------------------------------------


def base_model_add_from_folder(*, by, name: str, path: str) -> BaseModel:
    """Staff only (a path on the server): register a model folder, or an s3:// prefix, as a shared model."""
    if not by.is_staff:
        raise NotAllowed("only staff register a folder on the server", field="path")
    name = _check_name(name, owner=None)
    path = (path or "").strip()
    if is_store_url(path):
        folder: str | Path = path.rstrip("/")
    else:
        folder = _model_folder_on_server(path)
    try:
        return base_model_register(name=name, path=folder)
    except ProductError:
        raise
    except (OSError, ValueError) as exc:
        log.warning("registering the model folder %s failed", path, exc_info=True)
        raise ProductError(f"{path} cannot be registered: {failure_category(exc)}", field="path") from None


def _model_folder_on_server(path: str) -> Path:
    """The resolved model folder at `path`, or a ProductError (field "path") that says what is wrong with it."""
    if not path:
        raise ProductError("give the folder of the model on the server, e.g. /srv/models/my-model", field="path")
    folder = Path(path)
    if not folder.is_absolute():
        raise ProductError(
            f"{path!r} is not an absolute path: give the whole path from the root, e.g. /srv/models/my-model",
            field="path",
        )
    if not folder.exists():
        raise ProductError(f"The folder {path} does not exist on the server", field="path")
    if not folder.is_dir():
        raise ProductError(f"{path} is a file, not a folder: give the folder that holds the model", field="path")
    folder = folder.resolve()
    has_config, has_weights = (folder / "config.json").is_file(), any(folder.glob("*.safetensors"))
    if not has_config and not has_weights:
        raise ProductError(f"The folder {path} holds no model files (config.json and *.safetensors)", field="path")
    if not has_config:
        raise ProductError(
            f"The folder {path} has .safetensors weights but no config.json (a Hugging Face model folder has both)",
            field="path",
        )
    if not has_weights:
        raise ProductError(
            f"The folder {path} has a config.json but no .safetensors weights (pickle-based weights are never loaded)",
            field="path",
        )
    return folder


# -- the Hugging Face Hub --------------------------------------------------------------------------


def hub_policy() -> OutboundPolicy:
    """Hub downloads go to the public internet only, plus the hosts an administrator allows."""
    return OutboundPolicy.build(ports=settings.HUB_ALLOWED_PORTS, hosts=settings.HUB_ALLOWED_HOSTS)


def base_model_add_from_hub(*, by, hub_id: str, revision: str = "", token: str = "", name: str = "") -> BaseModel:
    """Record a model to download from the Hub and queue the download (background worker)."""
    owner = _owner_for(by)
    if settings.OFFLINE:
        raise ProductError(
            "this server is offline (OFFLINE=1) and cannot download from the Hugging Face Hub; "
            "register a local folder or upload a GGUF file instead",
            field="hub_id",
        )
    hub_id = check_repo_id((hub_id or "").strip())
    revision = check_revision((revision or "").strip() or "main")
    if len(token or "") > 500:
        raise ProductError("the token is too long", field="token")
    with transaction.atomic():
        model = _create(
            name=_check_name(name or hub_id, owner=owner),
            path="",
            owner=owner,
            source=ModelSource.HUB,
            status=ModelStatus.QUEUED,
            hub_id=hub_id,
            hub_revision=revision,
        )
        if (token or "").strip():
            hub_token_keep(model.id, token.strip())  # refused: the row goes too
        queue.enqueue(queue.HUB_DOWNLOAD, str(model.id))
    return model


# Train workers announce their memory in the training app; it registers a probe here when it loads
# (this app sits below training and cannot import it).
_worker_memory_probes: list[Callable[[], float | None]] = []


def register_worker_memory_probe(probe: Callable[[], float | None]) -> None:
    """`probe()` returns the largest live train worker's memory in MB, or None when none has announced."""
    if probe not in _worker_memory_probes:
        _worker_memory_probes.append(probe)


def largest_worker_memory_mb() -> float:
    """The largest train worker's memory; this machine's RAM when no worker has announced."""
    for probe in _worker_memory_probes:
        try:
            found = probe()
        except Exception:  # a registry that cannot be read must not block a download
            log.exception("worker memory probe failed")
            found = None
        if found:
            return float(found)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def size_refusal(*, weights_bytes: int, total_bytes: int, folder: Path) -> str | None:
    """Why a download of this size cannot be used here (disk or worker memory), or None."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if total_bytes > free:
        return (
            f"the model needs {total_bytes / GB:.2f} GB of disk and only {free / GB:.2f} GB are free "
            f"where base models are kept"
        )
    memory_mb = largest_worker_memory_mb()
    if weights_bytes / 2**20 > memory_mb:
        return (
            f"the model's weights ({weights_bytes / GB:.2f} GB) do not fit the largest train worker's "
            f"memory ({memory_mb / 1024:.2f} GB)"
        )
    return None


def _claim(model_id, *, waiting: ModelStatus, working: ModelStatus) -> BaseModel | None:
    """Take the model's work (a redelivered task after a worker died resumes it: `working` counts too)."""
    if BaseModel.objects.filter(id=model_id, status__in=[waiting, working]).update(status=working) != 1:
        return None
    return BaseModel.objects.get(id=model_id)


def _fail(model: BaseModel, message: str, folder: Path | None) -> None:
    BaseModel.objects.filter(id=model.id).update(status=ModelStatus.FAILED, error=message[:2000])
    hub_token_forget(model.id)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
    BaseModel.objects.filter(id=model.id).update(stored_bytes=blobs.stored_bytes(model_relative(model)))


class _Progress:
    """Counts downloaded bytes and stores them on the row at most every PROGRESS_EVERY_S."""

    def __init__(self, model_id):
        self.model_id, self.done, self.saved_at = model_id, 0, 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.saved_at >= PROGRESS_EVERY_S:
            self.save()
            self.saved_at = now

    def save(self) -> None:
        BaseModel.objects.filter(id=self.model_id).update(bytes_done=max(self.done, 0))


def base_model_download(*, model_id) -> None:
    """The background worker's part: list the revision, refuse remote code, pickle-only weights and what does
    not fit (disk, largest worker's memory) before any weight is fetched, then download (resumable) and describe."""
    model = _claim(model_id, waiting=ModelStatus.QUEUED, working=ModelStatus.DOWNLOADING)
    if model is None:
        return
    folder = model_folder(model)
    if settings.OFFLINE:
        _fail(model, "this server is offline (OFFLINE=1) and cannot download from the Hugging Face Hub", folder)
        return
    client = HubClient(
        settings.HF_ENDPOINT, token=hub_token_of(model.id), policy=hub_policy(), timeout=settings.HUB_TIMEOUT_SECONDS
    )
    try:
        sha, listed = client.repo_files(model.hub_id, model.hub_revision)
        wanted = files_to_fetch(listed)
        refusal = remote_code_refusal(client.file_json(model.hub_id, sha, "config.json"))
        if not refusal and any(f.name == "tokenizer_config.json" for f in wanted):
            refusal = remote_code_refusal(
                client.file_json(model.hub_id, sha, "tokenizer_config.json"), where="tokenizer_config.json"
            )
        if refusal:
            raise HubError(refusal)
        weights = sum(f.size for f in wanted if f.name.endswith(".safetensors"))
        total = sum(f.size for f in wanted)
        refusal = size_refusal(weights_bytes=weights, total_bytes=total, folder=folder)
        if refusal:
            raise HubError(refusal)
        if model.owner_id is not None:  # a user's private model counts against their storage
            check_limit(model.owner, "storage_bytes", used=storage_used(model.owner), adding=total)
        BaseModel.objects.filter(id=model.id).update(bytes_total=total)
        progress = _Progress(model.id)
        with blobs.writing(model_relative(model), in_place=True):  # in place: a redelivery resumes the download
            for file in wanted:
                client.download(model.hub_id, sha, file, folder, progress)
        progress.save()
        _finish(model, model_relative(model))
        hub_token_forget(model.id)
    except ProductError as exc:
        _fail(model, exc.message, folder)
    except (OSError, ValueError) as exc:
        log.exception("download of %s failed", model.hub_id)
        _fail(model, f"the downloaded model cannot be read: {failure_category(exc)}", folder)


# -- a GGUF upload -----------------------------------------------------------------------------------


def base_model_add_from_gguf(*, by, upload, name: str = "") -> BaseModel:
    """Store an uploaded GGUF file (size-capped, magic checked) and queue its conversion into a
    safetensors folder (background worker)."""
    owner = _owner_for(by)
    if upload is None:
        raise ProductError("upload a .gguf file", field="file")
    if upload.size > settings.GGUF_MAX_BYTES:
        raise ProductError(
            f"the file is {upload.size / GB:.2f} GB; the limit is "
            f"{settings.GGUF_MAX_BYTES / GB:.2f} GB (GGUF_MAX_BYTES)",
            field="file",
        )
    head = upload.read(4)
    upload.seek(0)
    if head != GGUF_MAGIC:
        raise ProductError("not a GGUF file (it does not start with the GGUF signature)", field="file")
    if owner is not None:  # the upload is stored until converted; the converted folder is checked again
        check_limit(owner, "storage_bytes", used=storage_used(owner), adding=upload.size)
    default_name = Path(upload.name or "model.gguf").stem
    model = _create(
        name=_check_name(name or default_name, owner=owner),
        path="",
        owner=owner,
        source=ModelSource.GGUF,
        status=ModelStatus.QUEUED,
        bytes_total=upload.size,
    )
    with blobs.writing(f"{model_relative(model)}/upload.gguf") as path:  # the converting worker may be elsewhere
        with open(path, "wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
    queue.enqueue(queue.GGUF_CONVERT, str(model.id))
    return model


def base_model_convert_gguf(*, model_id) -> None:
    """The background worker's part: check the GGUF's header against its size, the disk and the memory, then
    dequantize it into a float32 safetensors folder in a capped child process (as the demo model is made),
    describe it, and drop the GGUF. A conversion started GGUF_CONVERT_ATTEMPTS times already fails for good."""
    model = _claim(model_id, waiting=ModelStatus.QUEUED, working=ModelStatus.CONVERTING)
    if model is None:
        return
    folder, upload = model_folder(model), f"{model_relative(model)}/upload.gguf"
    BaseModel.objects.filter(id=model.id).update(attempts=F("attempts") + 1)
    model.refresh_from_db(fields=["attempts"])
    if model.attempts > settings.GGUF_CONVERT_ATTEMPTS:
        _fail(
            model,
            f"the conversion was started {model.attempts - 1} times and never finished (its worker stopped); "
            f"it is not tried again (GGUF_CONVERT_ATTEMPTS)",
            folder,
        )
        return
    try:
        with blobs.writing(f"{model_relative(model)}/model", in_place=True) as out:  # the converter is atomic
            convert_gguf_limited(
                blobs.fetch(upload),
                out,
                memory_mb=settings.GGUF_CONVERT_MEMORY_MB,
                seconds=settings.GGUF_CONVERT_SECONDS,
                max_parameters=settings.GGUF_MAX_PARAMETERS,
            )
            if model.owner_id is not None:  # float weights can be larger than the GGUF: refused before publishing
                used = storage_used(model.owner) - blobs.stored_bytes(model_relative(model))  # this model's, replaced
                check_limit(model.owner, "storage_bytes", used=used, adding=blobs.local_bytes(out))
        blobs.delete(upload)
        _finish(model, f"{model_relative(model)}/model")
    except QuotaExceeded as exc:
        blobs.delete(upload)
        _fail(model, exc.message, folder)
    except (ProductError, InputError) as exc:  # refused before building, or the child said why in plain words
        log.warning("GGUF conversion of %s refused: %s", model_id, exc.message)
        _fail(model, exc.message, folder)
    except Exception as exc:  # a GGUF the converter cannot read: any error of gguf/transformers
        log.exception("GGUF conversion of %s failed", model_id)
        _fail(model, f"the GGUF file cannot be converted: {failure_category(exc)}", folder)


def base_model_add(
    *,
    by,
    source: str,
    name: str = "",
    hub_id: str = "",
    revision: str = "",
    token: str = "",
    path: str = "",
    upload=None,
) -> BaseModel:
    """Add a model from one of the three sources (the page and the API both come here)."""
    if source == ModelSource.HUB:
        if not (hub_id or "").strip():
            raise ProductError("give the model's Hugging Face id", field="hub_id")
        return base_model_add_from_hub(by=by, hub_id=hub_id, revision=revision, token=token, name=name)
    if source == ModelSource.FOLDER:
        return base_model_add_from_folder(by=by, name=name, path=path)
    if source == ModelSource.GGUF:
        return base_model_add_from_gguf(by=by, upload=upload, name=name)
    raise ProductError("choose a source: hub, folder or gguf", field="source")


# -- delete ------------------------------------------------------------------------------------------


def base_model_delete(*, by, model: BaseModel) -> None:
    """Delete a model and the folder this product made for it; refused while a job uses it, and for a shared
    model unless `by` is staff. (`model` comes from an owner-filtered selector.)"""
    if model.shared and not by.is_staff:
        raise NotAllowed("only staff delete a shared base model", field="id")
    if model.status in (ModelStatus.QUEUED, ModelStatus.DOWNLOADING, ModelStatus.CONVERTING):
        raise StateError(
            f"{model.name} is still being prepared ({model.status}); delete it once it has finished or failed"
        )
    jobs = model.jobs.count()
    if jobs:
        raise StateError(
            f"{model.name} is used by {jobs} fine-tuning job{'s' if jobs != 1 else ''}; delete those jobs first",
            field="base_model",
        )
    try:
        model.delete()
    except ProtectedError:  # a job was made on it just now
        raise StateError(f"{model.name} is used by a fine-tuning job; delete it first", field="base_model") from None
    blobs.delete(f"base-gguf/{model.id}")  # the GGUF that exports of its adapters reuse, if one was made
    if model.source != ModelSource.FOLDER:
        blobs.delete(model_relative(model))
