"""Signals this domain sends. `job_finished` (sender=FineTuneJob, job=<FineTuneJob>) is sent once a
job's end (succeeded, failed, cancelled, pruned) is committed; webhooks listen to it. `eval_recorded`
(sender=FineTuneJob, job_id=..., step=...) is sent by the train worker right after a point with a validation
metric is written; a sweep's pruner listens to it (and may ask the job to stop with stop_requested "prune")."""

from django.dispatch import Signal

job_finished = Signal()
eval_recorded = Signal()
