"""Benchmarks hear of job ends through training's signal (connected in BenchmarksConfig.ready)."""

from __future__ import annotations

import logging

from django.dispatch import receiver

from jobs.benchmarks.services import benchmark_after_job
from jobs.training.signals import job_finished

log = logging.getLogger(__name__)


@receiver(job_finished, dispatch_uid="benchmarks-on-job-finished")
def benchmark_finished_job(sender, job, **kwargs):
    try:
        benchmark_after_job(job)
    except Exception:  # the job's end stands whatever happens here; the user can still ask for a run
        log.exception("could not queue the automatic benchmark of job %s", job.id)
