"""What training does when other domains signal (connected in TrainingConfig.ready)."""
from __future__ import annotations

from django.dispatch import receiver

from training.models import TERMINAL_STATUSES
from user_datasets.services import DatasetInUse
from user_datasets.signals import dataset_deleting


@receiver(dataset_deleting, dispatch_uid="training-refuses-dataset-in-use")
def refuse_dataset_in_use(sender, dataset, **kwargs):
    """A dataset an unfinished job still reads cannot be deleted (finished jobs keep their snapshot)."""
    active = list(dataset.jobs.exclude(status__in=TERMINAL_STATUSES).values_list("name", "id"))
    if active:
        names = ", ".join(name or str(job_id)[:8] for name, job_id in active)
        raise DatasetInUse(f"{dataset.name} is used by unfinished job(s): {names}. Cancel them or wait until they end.")
