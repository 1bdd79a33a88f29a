"""What sweeps do when training signals (connected in SweepsConfig.ready): prune a trial that reported a poor
validation metric, and start the next trials when one ends. A failure here never reaches the train worker's run:
it is logged, and the periodic sweep (jobs.sweeps.tasks) moves the sweep on."""

from __future__ import annotations

import logging

from django.dispatch import receiver

from jobs.datasets.services import DatasetInUse
from jobs.datasets.signals import dataset_deleting
from jobs.sweeps.models import SWEEP_TERMINAL, SweepTrial
from jobs.sweeps.services import sweep_advance, trial_prune_check
from jobs.training.signals import eval_recorded, job_finished

log = logging.getLogger(__name__)


@receiver(eval_recorded, dispatch_uid="sweeps-prune-on-eval")
def prune_on_eval(sender, job_id, step, **kwargs):
    return trial_prune_check(job_id=job_id, step=step)


@receiver(job_finished, dispatch_uid="sweeps-next-trial-on-job-end")
def next_trial_on_job_end(sender, job, **kwargs):
    sweep_id = SweepTrial.objects.filter(job_id=job.id).values_list("sweep_id", flat=True).first()
    if sweep_id is None:
        return
    try:
        sweep_advance(sweep_id=sweep_id)
    except Exception:  # the periodic sweep tries again
        log.exception("sweep %s: could not move on after job %s ended", sweep_id, job.id)


@receiver(dataset_deleting, dispatch_uid="sweeps-refuse-dataset-in-use")
def refuse_dataset_in_use(sender, dataset, **kwargs):
    """A dataset an unfinished sweep still makes trials from cannot be deleted."""
    active = list(dataset.sweeps.exclude(status__in=SWEEP_TERMINAL).values_list("name", "id"))
    if active:
        names = ", ".join(name or str(sweep_id)[:8] for name, sweep_id in active)
        raise DatasetInUse(
            f"{dataset.name} is used by unfinished sweep(s): {names}. Cancel them or wait until they end."
        )
