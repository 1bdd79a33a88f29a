"""Fit by memory: what a train worker has (`Capacity`) and whether a job fits it. A free train worker
claims only the fairest queued job that fits it (jobs.training.claims.fair_order); there is one train
queue, the jobs table, and nothing routes a job to a worker."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from django.conf import settings

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
    """Why a queued job cannot start on any live worker, with the need and what the live ones have
    ("waits for a worker with 24 GB; the live ones have 16 GB"); "" when one fits it or none is live."""
    if not capacities or any(fits(c, need_mb=need_mb, devices=devices) for c in capacities):
        return ""
    need = f"{devices} devices of {gb(need_mb)}" if devices > 1 else gb(need_mb)
    have = sorted({(c.memory_mb, c.max_devices) for c in capacities}, reverse=True)
    if devices > 1:
        live = ", ".join(f"{count} × {gb(memory)}" for memory, count in have)
    else:
        live = ", ".join(dict.fromkeys(gb(memory) for memory, _ in have))
    return f"waits for a worker with {need}; the live ones have {live}"
