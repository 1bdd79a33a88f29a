"""The engine's Reporter for the web app: metric points and events to the database and to Redis,
every write fenced by the run's claim on the job."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.db import transaction

from jobs.common import blobs
from jobs.common.storage import media_relative
from jobs.training.claims import Claim
from jobs.training.files import RESUME_ADAPTERS, job_storage_record
from jobs.training.live import publish_job, publish_status
from jobs.training.models import FineTuneJob, JobEvent, MetricPoint
from jobs.training.signals import eval_recorded

log = logging.getLogger(__name__)
CORE_KEYS = {"loss", "eval_loss", "lr", "epoch", "tokens_per_s"}


class DbReporter:
    """Upserts MetricPoint(job, step), so a resumed job rewrites a step instead of duplicating it.
    A run that lost its claim gets WorkLost from every call instead of writing."""

    def __init__(self, claim: Claim):
        self.claim = claim
        self.job_id = claim.job_id

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        point = self.claim.retry(lambda: self._write_point(step, metrics))
        publish_job(self.job_id, "metric", point.as_event())
        if any(key.startswith("eval_") for key in metrics):
            # A listener's failure (a sweep's pruner) must never stop the training: robust, logged.
            for _, answer in eval_recorded.send_robust(sender=FineTuneJob, job_id=self.job_id, step=step):
                if isinstance(answer, Exception):
                    log.warning("job %s: a listener of eval_recorded failed: %r", self.job_id, answer)

    def _write_point(self, step: int, metrics: dict[str, Any]) -> MetricPoint:
        extra = {k: v for k, v in metrics.items() if k not in CORE_KEYS}
        with transaction.atomic():
            # The fence first: the row update holds the job until the point is written.
            self.claim.renew(step=step, total_steps=metrics.get("total_steps", 0))
            point, _ = MetricPoint.objects.update_or_create(
                job_id=self.job_id,
                step=step,
                defaults=dict(
                    epoch=metrics.get("epoch", 0),
                    train_loss=metrics.get("loss"),
                    eval_loss=metrics.get("eval_loss"),
                    lr=metrics.get("lr"),
                    tokens_per_s=metrics.get("tokens_per_s"),
                    extra=extra,
                ),
            )
        return point

    def event(self, kind: str, message: str) -> None:
        def write():
            with transaction.atomic():
                self.claim.renew()
                JobEvent.objects.create(job_id=self.job_id, kind=kind, message=message)

        self.claim.retry(write)
        publish_job(self.job_id, "message", {"kind": kind, "message": message})

    def precision(self, name: str) -> None:
        """Record the frozen base's dtype this run trains in (the engine resolves config precision auto)."""
        self.claim.retry(lambda: self.claim.renew(precision=name))
        publish_status(FineTuneJob.objects.get(id=self.job_id))

    def guard(self) -> None:
        """Called by the engine before each file it writes for the job."""
        self.claim.retry(self.claim.check)

    def checkpoint_saved(self, folder: Path) -> None:
        """Copy the checkpoints to the object store (pruned ones leave it too), with the adapters a resumed
        run needs besides (the best so far, PiSSA's initial one), so another worker can resume."""
        self.guard()
        out = Path(folder).parent.parent
        blobs.mirror(media_relative(Path(folder).parent))
        for name in RESUME_ADAPTERS:
            if (out / name).is_dir():
                with blobs.writing(media_relative(out / name), in_place=True):
                    pass  # the engine wrote it in place; leaving the block publishes it
        self.claim.retry(lambda: job_storage_record(self.job_id))  # through a dropped connection, as every write
