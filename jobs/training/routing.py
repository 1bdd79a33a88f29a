"""Routing train jobs to the workers that fit them, by memory class.

The sizes of ROUTING_MEMORY_CLASSES_GB (say 8, 16, 24) cut memory into classes, one queue each: a job
whose pre-flight estimate needs up to 8 GB goes to `train` (the queue `make run` has always used), up
to 16 GB to `train.mem16`, up to 24 GB to `train.mem24`, and above the last size to `train.memmax`.
A worker consumes every class up to the one its own memory falls in: a 20 GB worker takes `train`,
`train.mem16` and `train.mem24`. So every worker that fits a job consumes its queue; the only jobs a
worker may be handed that it cannot fit are those of its own (top) class above its memory, and the
claim skips them (`fits`): a worker only ever starts a job that fits it."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from django.conf import settings

DEFAULT_QUEUE = "train"
OVERFLOW_QUEUE = "train.memmax"
MB_PER_GB = 1024


@dataclass(frozen=True)
class Capacity:
    """What one train worker has: its device kind, how many, and the memory of each (MB)."""

    device: str
    count: int
    memory_mb: float

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def max_devices(self) -> int:
        """The most `devices` a job may use here: a GPU worker's GPUs; on a CPU worker N processes share
        its cores (and its memory, which the estimate counts N times), up to TRAIN_MAX_DEVICES."""
        return self.count if self.device == "cuda" else max(self.count, settings.TRAIN_MAX_DEVICES)


def class_queues() -> list[tuple[str, float | None]]:
    """Every class queue with the most memory (GB) its jobs need, smallest first (None: above them all)."""
    sizes = settings.ROUTING_MEMORY_CLASSES_GB
    return ([(DEFAULT_QUEUE, sizes[0])] + [(f"train.mem{size:g}", size) for size in sizes[1:]]
            + [(OVERFLOW_QUEUE, None)])


def queue_for_need(need_mb: float) -> str:
    """The queue of a job that needs `need_mb` of memory."""
    for name, size in class_queues():
        if size is None or need_mb <= size * MB_PER_GB:
            return name
    raise AssertionError("the overflow class takes any size")


def queues_for_memory(memory_mb: float) -> list[str]:
    """The queues a worker with `memory_mb` consumes: every class up to the one its memory falls in."""
    own = queue_for_need(memory_mb)
    names = [name for name, _ in class_queues()]
    return names[:names.index(own) + 1]


def job_devices(config: dict) -> int:
    """How many devices a job trains on (1 unless its config asks for more)."""
    return int(config.get("devices") or 1)


def fits(capacity: Capacity, *, need_mb: float, devices: int = 1) -> bool:
    """Whether a job needing `need_mb` per device on `devices` devices fits this worker."""
    return need_mb <= capacity.memory_mb and devices <= capacity.max_devices


def gb(mb: float) -> str:
    """MB as GB for people, rounded up to a tenth (a worker with that much is enough)."""
    return f"{math.ceil(mb / MB_PER_GB * 10) / 10:g} GB"


def waiting_for(*, need_mb: float, devices: int, capacities: list[Capacity]) -> str:
    """Why a queued job cannot start on any live worker ("" when one fits it, or none has announced)."""
    if not capacities or any(fits(c, need_mb=need_mb, devices=devices) for c in capacities):
        return ""
    what = f"waiting for a worker with >= {gb(need_mb)}"
    return what + (f" and {devices} devices" if devices > 1 else "")


def route_train_job(name, args, kwargs, options, task=None, **kw):
    """Celery router: a train job's message goes to the queue of the job's memory class."""
    if name != "training.job_run" or not args:
        return None
    from jobs.common.ids import is_uuid
    from jobs.training.models import FineTuneJob

    if not is_uuid(args[0]):
        return None
    need = FineTuneJob.objects.filter(id=args[0]).values_list("memory_mb", flat=True).first()
    return {"queue": queue_for_need(need or 0)}
