"""What training does when other domains signal (connected in TrainingConfig.ready)."""

from __future__ import annotations

from django.db.models import Sum
from django.dispatch import receiver

from jobs.accounts.limits import usage_reported
from jobs.base_models.services import register_worker_memory_probe
from jobs.datasets.services import DatasetInUse
from jobs.datasets.signals import dataset_deleting
from jobs.training import selectors
from jobs.training.claims import compute_seconds_today
from jobs.training.files import job_storage_record
from jobs.training.models import TERMINAL_STATUSES, FineTuneJob, JobStatus


@receiver(dataset_deleting, dispatch_uid="training-refuses-dataset-in-use")
def refuse_dataset_in_use(sender, dataset, **kwargs):
    """A dataset an unfinished job still reads cannot be deleted (finished jobs keep their snapshot)."""
    active = list(dataset.jobs.exclude(status__in=TERMINAL_STATUSES).values_list("name", "id"))
    if active:
        names = ", ".join(name or str(job_id)[:8] for name, job_id in active)
        raise DatasetInUse(f"{dataset.name} is used by unfinished job(s): {names}. Cancel them or wait until they end.")


@receiver(usage_reported, dispatch_uid="training-usage")
def report_usage(sender, user, **kwargs):
    """The user's jobs and the files they keep (data snapshots, checkpoints, adapters, zips, merged exports),
    as each job's row records them after every write; a row from an older release is measured once here."""
    for job_id in FineTuneJob.objects.filter(owner=user, stored_bytes__isnull=True).values_list("id", flat=True):
        job_storage_record(job_id)
    stored = FineTuneJob.objects.filter(owner=user).aggregate(total=Sum("stored_bytes"))["total"] or 0
    return {
        "storage_bytes": stored,
        "active_jobs": selectors.active_job_count(owner=user),
        "running_jobs": FineTuneJob.objects.filter(owner=user, status=JobStatus.RUNNING).count(),
        "compute_seconds_per_day": int(compute_seconds_today(owner=user)),
    }


def _largest_train_worker_mb() -> float | None:
    """The memory of the largest live train worker, for the Hub download's size check (base_models)."""
    from jobs.training.workers import live_capacities

    return max((capacity.memory_mb for _, capacity in live_capacities()), default=None)


register_worker_memory_probe(_largest_train_worker_mb)
