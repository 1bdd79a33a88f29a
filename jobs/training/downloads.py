"""A job's downloads (the adapter zip, its exports' zips), the same for its page and the REST API."""

from __future__ import annotations

from django.http import Http404

from jobs.common.responses import download_name, file_download
from jobs.training.exports import export_state, merged_export_of
from jobs.training.files import export_zip_name
from jobs.training.models import ExportFormat, FineTuneJob, JobExport


def adapter_download(job: FineTuneJob):
    """The job's adapter zip, or a 404 when it has none (yet)."""
    if not job.has_adapter:
        raise Http404("this job has no adapter")
    return file_download(
        job.adapter.zip_file,
        content_type="application/zip",
        filename=download_name(job.name or f"lora-{job.short_id}", "-adapter.zip"),
    )


def export_download(export: JobExport | None):
    """An export's zip, or a 404 until it is ready."""
    if export is None or export_state(export) != "ready":
        raise Http404("this export is not ready")
    job = export.job
    kind = "merged" if export.format == ExportFormat.MERGED else export.format
    kind += f"-{export.quantization}" if export.quantization else ""
    return file_download(
        export_zip_name(export),
        content_type="application/zip",
        filename=download_name(job.name or f"lora-{job.short_id}", f"-{kind}.zip"),
    )


def merged_download(job: FineTuneJob):
    """The job's merged-model zip, or a 404 until the export is ready."""
    export = merged_export_of(job)
    if export is None or export_state(export) != "ready":
        raise Http404("no merged model yet; POST to this address to make one")
    return export_download(export)
