"""The periodic sweep of sweeps (Celery beat, background queue): moves every running sweep on, the backstop for
a lost or failed call when a trial ended, and after any process restarted."""

from __future__ import annotations

import logging

from celery import shared_task

from jobs.common import queue
from jobs.sweeps.models import Sweep, SweepStatus
from jobs.sweeps.services import sweep_advance, trials_settle

log = logging.getLogger(__name__)


@shared_task(name=queue.SWEEP_SWEEPS)
def sweeps_advance() -> dict[str, int]:
    """Settle and move on every running sweep (paused ones only settle their ended trials). Safe to run anywhere,
    often, twice at once."""
    started = 0
    for sweep in Sweep.objects.filter(status__in=[SweepStatus.RUNNING, SweepStatus.PAUSED]):
        try:
            if sweep.status == SweepStatus.PAUSED:
                trials_settle(sweep)
            else:
                started += len(sweep_advance(sweep_id=sweep.id))
        except Exception:
            log.exception("sweep %s: could not move on", sweep.id)
    return {"started": started}
