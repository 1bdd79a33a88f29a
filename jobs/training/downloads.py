"""A job's downloads (the adapter zip, the merged model), the same for its page and the REST API."""

from __future__ import annotations

from django.http import Http404

from jobs.common.responses import download_name, file_download
from jobs.training.files import merged_zip_name
from jobs.training.merges import merged_status
from jobs.training.models import FineTuneJob


def adapter_download(job: FineTuneJob):
    """The job's adapter zip, or a 404 when it has none (yet)."""
    if not job.has_adapter:
        raise Http404("this job has no adapter")
    return file_download(
        job.adapter.zip_file,
        content_type="application/zip",
        filename=download_name(job.name or f"lora-{job.short_id}", "-adapter.zip"),
    )


def merged_download(job: FineTuneJob):
    """The job's merged-model zip, or a 404 until the export is ready."""
    if merged_status(job) != "ready":
        raise Http404("no merged model yet; POST to this address to make one")
    return file_download(
        merged_zip_name(job),
        content_type="application/zip",
        filename=download_name(job.name or f"lora-{job.short_id}", "-merged.zip"),
    )
