"""Publishing a job to the Hugging Face Hub: the adapter, or one of its ready exports (merged, GGUF LoRA, merged
GGUF), pushed with huggingface_hub's upload API (`create_repo`, then `upload_folder`) on the background worker,
under the user's own token, with the model card filled in for the Hub (the adapter's card, its recipes loading
from the repository).

The token is kept only for the upload: in Redis, under the publish's id, with a short expiry, and taken (read and
deleted at once) when the upload starts. It is never a database field, a task argument, a log line or part of an
answer. Every connection huggingface_hub opens goes through the outbound-request rules (jobs.common.outbound):
the Hub endpoint (HF_ENDPOINT), and any address it redirects to, must be public or allowed by HUB_ALLOWED_HOSTS."""

from __future__ import annotations

import datetime as dt
import logging
import re
import tempfile
import threading
import zipfile
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from jobs.base_models.hub import check_repo_id
from jobs.base_models.hub_tokens import hub_token_keep, hub_token_take
from jobs.base_models.services import hub_policy
from jobs.common import blobs, queue
from jobs.common.exceptions import ProductError, StateError
from jobs.common.outbound import OutboundError, registration_refusal
from jobs.common.outbound_client import guarded_client
from jobs.training.exports import export_of, export_state
from jobs.training.files import export_zip_name
from jobs.training.models import FineTuneJob, JobPublish
from worker.serving_recipes import recipes_markdown, serving_name, serving_recipes

log = logging.getLogger(__name__)
PUBLISH_TOKEN_SECONDS = 3600  # the upload starts within minutes; an hour covers a busy background worker
PUBLISH_RUNNING_SECONDS = 24 * 3600  # a push still running a day after it was asked for lost its worker
Status = JobPublish.Status
What = JobPublish.What
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_session_installed = threading.Lock()
_installed: list[bool] = []


def _token_key(publish_id: int) -> str:
    return f"hub-publish-token:{publish_id}"


def _checked(*, repo_id: str, token: str, what: str) -> tuple[str, str]:
    if not isinstance(repo_id, str) or "/" not in repo_id.strip():
        raise ProductError("must be a Hub repository id such as your-name/my-adapter", field="repo_id")
    try:
        repo_id = check_repo_id(repo_id.strip())
    except ProductError as exc:
        raise ProductError(str(exc), field="repo_id") from None
    token = (token or "").strip() if isinstance(token, str) else ""
    if not token:
        raise ProductError(
            "a Hugging Face token with write access is needed (huggingface.co/settings/tokens)", field="token"
        )
    if len(token) > 500 or re.search(r"\s", token):
        raise ProductError("this is not a Hugging Face token", field="token")
    if what not in What.values:
        raise ProductError(f"must be one of {', '.join(What.values)}", field="what")
    return repo_id, token


def _export_ready(job: FineTuneJob, what: str, quantization: str) -> None:
    """StateError saying to export first, unless the export to publish is ready."""
    state = export_state(export_of(job, what, quantization))
    if state == "ready":
        return
    label = what + (f" {quantization}" if quantization else "")
    if state == "pending":
        raise StateError(f"the {label} export is still being made: publish it once it is ready", field="what")
    body = f'{{"format": "{what}"' + (f', "quantization": "{quantization}"' if quantization else "") + "}"
    raise StateError(
        f"there is no {label} export of this job yet: export it first (the Export card, or POST "
        f"/api/v1/jobs/{job.id}/exports/ with {body}), then publish it",
        field="what",
    )


def publish_request(
    *, job: FineTuneJob, by, repo_id: str, token: str, what: str = What.ADAPTER, quantization: str = "", private=True
) -> JobPublish:
    """Queue a push of the job's adapter (or a ready export) to `repo_id`; the token waits in Redis only."""
    if job.owner_id != by.id:
        raise StateError("not your job")
    repo_id, token = _checked(repo_id=repo_id, token=token, what=what)
    quantization = (quantization or "f16") if what == What.GGUF_MERGED else ""
    if settings.OFFLINE:
        raise ProductError("this server is offline (OFFLINE=1) and cannot reach the Hugging Face Hub", field="repo_id")
    refused = registration_refusal(settings.HF_ENDPOINT, hub_policy())
    if refused is not None:
        raise ProductError(
            f"this server's Hub address (HF_ENDPOINT) may not be reached ({refused.category}); an administrator "
            "can allow it in HUB_ALLOWED_HOSTS",
            field="repo_id",
        )
    if not job.has_adapter:
        raise StateError("only a succeeded job has an adapter to publish")
    if what != What.ADAPTER:
        _export_ready(job, what, quantization)
    with transaction.atomic():
        row = JobPublish.objects.create(
            job=job, repo_id=repo_id, what=what, quantization=quantization, private=bool(private)
        )
        hub_token_keep(row.id, token, key=_token_key(row.id), seconds=PUBLISH_TOKEN_SECONDS)
        queue.enqueue(queue.HUB_PUBLISH, row.id)
    return row


# -- the upload (background worker) ------------------------------------------------------------------------------


def install_guarded_session() -> None:
    """Route all of huggingface_hub's HTTP through the Hub's outbound policy (once per process), and keep large
    files on plain HTTP(S) LFS uploads, which go through that client, instead of the Xet protocol's own one."""
    with _session_installed:
        if _installed:
            return
        from huggingface_hub import constants, set_client_factory

        constants.HF_HUB_DISABLE_XET = True
        set_client_factory(
            lambda: guarded_client(hub_policy, follow_redirects=True, timeout=float(settings.HUB_TIMEOUT_SECONDS))
        )
        _installed.append(True)


def hub_card(card: str, *, job: FineTuneJob, repo_id: str, what: str) -> str:
    """The adapter's model card made for the Hub: its recipes load from `repo_id`, and an export says what it is."""
    card = card.replace("path/to/this/folder", repo_id)
    head, _, _ = card.partition("\n## Serving it")
    recipes = serving_recipes(
        base_model=job.base_model.hub_id or job.base_model.name,
        name=serving_name(job.name, job.short_id),
        rank=int(job.config.get("rank") or 16),
        api_model=None,
        api_base="",
        adapter_path=repo_id,
    )
    serving = recipes_markdown(recipes)
    if what in (What.GGUF_LORA, What.GGUF_MERGED):
        serving += f"\n### Straight from the Hub\n\n```bash\nollama run hf.co/{repo_id}\n```\n"
        head = head.replace("- lora-studio", "- lora-studio\n- gguf", 1)
    if what != What.ADAPTER:
        labels: dict[str, str] = {
            What.MERGED: "merged safetensors model",
            What.GGUF_LORA: "GGUF LoRA (with the base as GGUF)",
        }
        note = (
            f"This repository holds the {labels.get(what, 'merged GGUF model')} export ({what}) of the adapter "
            "described below; the PEFT and vLLM recipes need the adapter itself (publish it as well)."
        )
        head = re.sub(r"(\n# [^\n]*\n)", lambda m: f"{m.group(1)}\n{note}\n", head, count=1)
    if what in (What.MERGED, What.GGUF_MERGED):
        head = head.replace(
            "library_name: peft", "library_name: transformers" if what == What.MERGED else "library_name: gguf", 1
        )
    return head.rstrip() + "\n\n" + serving


def _unzip(zip_path: Path, folder: Path) -> None:
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if info.is_dir() or not _FILE_NAME.fullmatch(info.filename):
                continue  # our zips are flat; anything else is not put in the repository
            with zf.open(info) as source, open(folder / info.filename, "wb") as target:
                while chunk := source.read(1 << 20):
                    target.write(chunk)


def _files_for(row: JobPublish, folder: Path) -> None:
    """The files to push, with README.md the Hub's model card."""
    job = row.job
    card = blobs.read_text(f"{job.adapter.folder}/README.md") or f"# {job.name or job.short_id}\n"
    if row.what == What.ADAPTER:
        _unzip(blobs.fetch(job.adapter.zip_file), folder)
    else:
        export = export_of(job, row.what, row.quantization)
        if export is None or export_state(export) != "ready":
            raise ProductError(f"the {row.what} export is gone: export it again, then publish", field="what")
        _unzip(blobs.fetch(export_zip_name(export)), folder)
    (folder / "README.md").write_text(hub_card(card, job=job, repo_id=row.repo_id, what=row.what))


def upload_failure(exc: BaseException, token: str) -> str:
    """Why the upload failed, in plain words (never the token)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, OutboundError):
        return f"the Hub could not be reached: {exc.category}"
    if isinstance(exc, ProductError):
        return str(exc)
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        code = exc.response.status_code
        words = {
            401: "the Hub refused the token (401): check it is a valid token",
            403: "the token may not write to this repository (403): use a token with write access to it",
            404: "the Hub found no such repository or namespace (404)",
        }
        message = words.get(code, f"the Hub answered {code}: {exc.server_message or 'no reason given'}")
    else:
        message = f"the upload failed ({type(exc).__name__})"
    return message.replace(token, "***") if token else message


def publish_run(publish_id: int) -> str:
    """Push one queued publish (the task's body); its end status. The token is taken from Redis at once."""
    if JobPublish.objects.filter(id=publish_id, status=Status.PENDING).update(status=Status.RUNNING) != 1:
        return "skipped"
    token = hub_token_take(_token_key(publish_id))
    row = JobPublish.objects.select_related("job__adapter", "job__base_model").get(id=publish_id)
    if not token:
        return _end(row, Status.FAILED, error="the token expired before the upload started: publish again")
    try:
        install_guarded_session()
        from huggingface_hub import HfApi

        api = HfApi(endpoint=settings.HF_ENDPOINT, token=token)
        with tempfile.TemporaryDirectory(prefix="publish-") as tmp:
            _files_for(row, Path(tmp))
            repo = api.create_repo(row.repo_id, private=row.private, exist_ok=True)
            api.upload_folder(
                repo_id=row.repo_id,
                folder_path=tmp,
                commit_message=f"LoRA Studio: {row.what} of job {row.job.short_id}",
            )
        return _end(row, Status.DONE, url=str(repo))
    except Exception as exc:  # whatever went wrong, the row says so in words and the token is gone
        log.info("publish %s failed: %s", publish_id, type(exc).__name__)
        return _end(row, Status.FAILED, error=upload_failure(exc, token))


def _end(row: JobPublish, status: str, *, url: str = "", error: str = "") -> str:
    JobPublish.objects.filter(id=row.id).update(status=status, url=url[:500], error=error[:2000], finished=Now())
    return status


def publishes_stale_fail() -> int:
    """Fail the pushes that can no longer end (the export sweep calls this): pending past the token's life (the
    message was lost, and the token is gone) or running for a day (the worker died); how many."""
    now = timezone.now()
    lost = JobPublish.objects.filter(
        status=Status.PENDING, created__lt=now - dt.timedelta(seconds=PUBLISH_TOKEN_SECONDS)
    )
    died = JobPublish.objects.filter(
        status=Status.RUNNING, created__lt=now - dt.timedelta(seconds=PUBLISH_RUNNING_SECONDS)
    )
    return lost.update(
        status=Status.FAILED, error="the upload never started before the token expired: publish again", finished=Now()
    ) + died.update(
        status=Status.FAILED, error="the upload stopped (its worker went away): publish again", finished=Now()
    )
