"""Signals this domain sends. `job_finished` (sender=FineTuneJob, job=<FineTuneJob>) is sent once a
job's end (succeeded, failed, cancelled) is committed; webhooks listen to it."""

from django.dispatch import Signal

job_finished = Signal()
