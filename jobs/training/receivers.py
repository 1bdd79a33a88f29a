"""What training does when other domains signal (connected in TrainingConfig.ready)."""

from __future__ import annotations

from django.db.models import Sum
from django.dispatch import receiver

from jobs.accounts.limits import usage_reported
from jobs.base_models.services import register_worker_memory_probe
from jobs.datasets.services import DatasetInUse
from jobs.datasets.signals import dataset_deleting
from jobs.training import selectors
from jobs.training.models import TERMINAL_STATUSES, Adapter, FineTuneJob, JobStatus, MergedExport


@receiver(dataset_deleting, dispatch_uid="training-refuses-dataset-in-use")
def refuse_dataset_in_use(sender, dataset, **kwargs):
    """A dataset an unfinished job still reads cannot be deleted (finished jobs keep their snapshot)."""
    active = list(dataset.jobs.exclude(status__in=TERMINAL_STATUSES).values_list("name", "id"))
    if active:
        names = ", ".join(name or str(job_id)[:8] for name, job_id in active)
        raise DatasetInUse(f"{dataset.name} is used by unfinished job(s): {names}. Cancel them or wait until they end.")


@receiver(usage_reported, dispatch_uid="training-usage")
def report_usage(sender, user, **kwargs):
    """The user's jobs and the files they keep: adapters and merged exports, as their rows record them
    (no call to the store)."""
    adapters = Adapter.objects.filter(job__owner=user).aggregate(total=Sum("size_bytes"))["total"] or 0
    merged = (
        MergedExport.objects.filter(job__owner=user, status=MergedExport.Status.READY).aggregate(
            total=Sum("size_bytes")
        )["total"]
        or 0
    )
    return {
        "storage_bytes": adapters + merged,
        "active_jobs": selectors.active_job_count(owner=user),
        "running_jobs": FineTuneJob.objects.filter(owner=user, status=JobStatus.RUNNING).count(),
        "compute_seconds_per_day": int(selectors.compute_seconds_today(owner=user)),
    }


def _largest_train_worker_mb() -> float | None:
    """The memory of the largest live train worker, for the Hub download's size check (base_models)."""
    from jobs.training.workers import live_capacities

    return max((capacity.memory_mb for _, capacity in live_capacities()), default=None)


register_worker_memory_probe(_largest_train_worker_mb)
