"""Reads of jobs. Every selector of user data takes the owner, so a forgotten filter is hard to write."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.db.models import Count, Max, Min, QuerySet
from django.shortcuts import get_object_or_404

from jobs.accounts.limits import user_limits
from jobs.base_models.models import BaseModel
from jobs.base_models.selectors import base_model_named
from jobs.common.ids import is_uuid
from jobs.training import workers as train_workers
from jobs.training.claims import compute_spent, fair_order
from jobs.training.models import Adapter, FineTuneJob, JobEvent, JobExport, JobPublish, JobStatus, MetricPoint
from jobs.training.routing import Capacity, fits, job_devices, waiting_for
from worker.serving_recipes import Recipe, serving_name, serving_recipes

ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)


def job_list(*, owner, status: str | None = None) -> QuerySet[FineTuneJob]:
    qs = FineTuneJob.objects.filter(owner=owner).select_related("dataset", "base_model")
    if status:
        qs = qs.filter(status=status)
    return qs


def job_get(*, owner, job_id) -> FineTuneJob:
    """The owner's job, or Http404 (another user's job does not exist for you)."""
    return get_object_or_404(job_list(owner=owner), id=job_id)


def job_find(*, owner, job_id) -> FineTuneJob | None:
    """The owner's job, or None (also for a value that is not an id)."""
    return job_list(owner=owner).filter(id=job_id).first() if is_uuid(job_id) else None


def job_events(*, job: FineTuneJob) -> QuerySet[JobEvent]:
    return JobEvent.objects.filter(job=job)


def metric_points(*, job: FineTuneJob, after_step: int = 0) -> QuerySet[MetricPoint]:
    return MetricPoint.objects.filter(job=job, step__gt=after_step).order_by("step")


def job_eval_losses(*, job: FineTuneJob) -> list[tuple[float | None, bool]]:
    """The job's logged eval losses in step order, each with whether it was a new best (its adapter kept with
    "keep best")."""
    rows = metric_points(job=job).filter(eval_loss__isnull=False).values_list("eval_loss", "extra")
    return [(loss, bool((extra or {}).get("best"))) for loss, extra in rows]


def measured_tokens_per_s(*, owner, base_model: BaseModel, qlora: bool, limit: int = 50) -> float | None:
    """The median training speed the owner's finished jobs on this base reached, or None."""
    measured = sorted(
        speed
        for speed in MetricPoint.objects.filter(
            job__owner=owner,
            job__base_model=base_model,
            job__status=JobStatus.SUCCEEDED,
            job__config__qlora=qlora,
            tokens_per_s__isnull=False,
        )
        .order_by("-id")
        .values_list("tokens_per_s", flat=True)[:limit]
        if speed is not None
    )  # (none is: the filter's tokens_per_s__isnull=False)
    return measured[len(measured) // 2] if measured else None


def measured_overhead_seconds(*, owner, base_model: BaseModel, limit: int = 20) -> float | None:
    """The median time the owner's finished jobs on this base spent outside their steps (loading, tokenizing,
    saving, the end-of-job evaluation): the run's time less the span of its steps. None before any such job."""
    jobs = (
        job_list(owner=owner, status=JobStatus.SUCCEEDED)
        .filter(base_model=base_model, run_seconds__gt=0)
        .annotate(first=Min("metrics__created"), last=Max("metrics__created"), n=Count("metrics"))
        .filter(n__gte=2)
        .order_by("-finished")[:limit]
    )
    gaps = [max(0.0, job.run_seconds - (job.last - job.first).total_seconds() * job.n / (job.n - 1)) for job in jobs]
    return sorted(gaps)[len(gaps) // 2] if gaps else None


def active_job_count(*, owner) -> int:
    """Jobs that hold a place: queued, running or paused."""
    return FineTuneJob.objects.filter(owner=owner, status__in=ACTIVE_STATUSES).count()


def adapter_list(*, owner) -> QuerySet[Adapter]:
    return Adapter.objects.filter(job__owner=owner).select_related("job__base_model").order_by("-created")


def export_list(*, owner, job_id) -> QuerySet[JobExport]:
    """The exports of the owner's job (merged, GGUF LoRA, merged GGUF), oldest first; Http404 for another's job."""
    job = job_get(owner=owner, job_id=job_id)
    return JobExport.objects.filter(job=job).select_related("job").order_by("created", "id")


def export_get(*, owner, job_id, export_id) -> JobExport:
    """One export of the owner's job, or Http404."""
    return get_object_or_404(export_list(owner=owner, job_id=job_id), id=export_id)


def publish_list(*, owner, job_id) -> QuerySet[JobPublish]:
    """The pushes of the owner's job to the Hub, newest first; Http404 for another's job."""
    return JobPublish.objects.filter(job=job_get(owner=owner, job_id=job_id)).order_by("-created", "-id")


def jobs_with_adapter(*, owner, base_model: BaseModel) -> QuerySet[FineTuneJob]:
    """The owner's succeeded jobs on `base_model` that have an adapter."""
    return job_list(owner=owner, status=JobStatus.SUCCEEDED).filter(base_model=base_model, adapter__isnull=False)


def job_waiting_for(*, job: FineTuneJob, fleet: list[tuple[str, Capacity]] | None = None) -> str:
    """For a queued job that fits no live train worker, what it waits for ("waits for a worker with 24 GB;
    the live ones have 16 GB"); else "". `fleet` defaults to the live workers (jobs.training.workers)."""
    if job.status != JobStatus.QUEUED or not job.memory_mb:
        return ""
    fleet = train_workers.live_capacities() if fleet is None else fleet
    return waiting_for(
        need_mb=job.memory_mb, devices=job_devices(job.config), capacities=[capacity for _, capacity in fleet]
    )


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def job_wait_reason(*, job: FineTuneJob, live: list[dict] | None = None, order: list | None = None) -> str:
    """Why a queued job has not started, in one sentence ("" unless it is queued): no train worker is
    running, none that is running fits it, its owner is at their running-jobs limit, or its place in the
    fair queue. `live` (the workers' announcements) and `order` (fair_order()) may be read once for a page."""
    if job.status != JobStatus.QUEUED:
        return ""
    live = train_workers.live_workers() if live is None else live
    if not live:
        return "waits for a train worker: none is running; it starts when one does"
    fleet = [(w["name"], train_workers.capacity_of(w)) for w in live]
    no_fit = job_waiting_for(job=job, fleet=fleet)
    if no_fit:
        return no_fit
    order = [str(i) for i in (fair_order() if order is None else order)]
    if str(job.id) not in order:
        if not FineTuneJob.objects.filter(id=job.id, status=JobStatus.QUEUED).exists():
            return ""  # claimed since it was read: nothing to wait for
        spent = compute_spent(job.owner)
        if spent is not None:
            return (
                f"waits: your daily training time ({spent:,} s) is used up; it starts when the day (UTC) turns, "
                "or sooner if an administrator raises your limit (QUOTA_COMPUTE_SECONDS_PER_DAY)"
            )
        allowed = user_limits(job.owner).running_jobs
        return f"waits for one of your running jobs to end (you may train {allowed} at a time)"
    place = _ordinal(order.index(str(job.id)) + 1)
    devices = job_devices(job.config)
    idle = [
        w
        for w in live
        if not w.get("job") and fits(train_workers.capacity_of(w), need_mb=job.memory_mb, devices=devices)
    ]
    return f"{place} in the fair queue" + ("" if idle else "; every train worker that fits it is busy")


def worker_list(*, viewer) -> dict:
    """The live train workers and why each of the viewer's queued jobs waits. Staff see everything (names,
    hosts, times, the queue's length); a user sees each worker's devices and memory, whether it is busy, and
    the job only when it is theirs: not the fleet's host names nor other users' queue."""
    announced = train_workers.live_workers()
    running = {w["job"] for w in announced if w.get("job")}
    mine = {str(j.id): j for j in job_list(owner=viewer).filter(id__in=[i for i in running if is_uuid(i)])}
    staff = bool(viewer.is_staff)
    workers = []
    for w in announced:
        job = mine.get(w.get("job") or "")
        worker = {
            "device": w["device"],
            "count": w["count"],
            "memory_mb": w["memory_mb"],
            "busy": bool(w.get("job")),
            "job": {"id": str(job.id), "name": job.name or job.short_id} if job else None,
        }
        if staff:
            worker.update(name=w["name"], host=w.get("host", ""), started=w.get("started"), seen=w.get("seen"))
        workers.append(worker)
    order = fair_order()
    waiting = [
        {
            "id": str(job.id),
            "name": job.name or job.short_id,
            "reason": job_wait_reason(job=job, live=announced, order=order),
        }
        for job in job_list(owner=viewer, status=JobStatus.QUEUED).order_by("created")
    ]
    answer: dict[str, Any] = {"workers": workers, "waiting": waiting, "no_fit": settings.ROUTING_NO_FIT}
    if staff:
        answer["queued_jobs"] = FineTuneJob.objects.filter(status=JobStatus.QUEUED).count()
    return answer


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40]


def job_api_model(job: FineTuneJob) -> str | None:
    """The model id that chats with the job's adapter over the OpenAI-compatible API,
    `ft:<base>:<name or user>:<job short id>`, once the job has succeeded."""
    if job.status != JobStatus.SUCCEEDED:
        return None
    return ft_model_id(job)


def ft_model_id(job: FineTuneJob) -> str:
    """The job's `ft:` model id, whatever its status (the model card is written before the job is marked done)."""
    return f"ft:{job.base_model.name}:{_slug(job.name) or _slug(job.owner.username) or 'user'}:{job.short_id}"


def job_serving_recipes(job: FineTuneJob, *, api_base: str) -> list[Recipe]:
    """How to serve the job's adapter elsewhere (vLLM, this product's API, PEFT, llama.cpp, Ollama)."""
    return serving_recipes(
        base_model=job.base_model.hub_id or job.base_model.name,
        name=serving_name(job.name, job.short_id),
        rank=int(job.config.get("rank") or 16),
        api_model=ft_model_id(job),
        api_base=api_base,
    )


def model_named(*, owner, name: str) -> tuple[BaseModel, FineTuneJob | None] | None:
    """A base model's name or one of the owner's `ft:` ids (`job_api_model`) -> (base model, job or None);
    None when the owner has no such model."""
    if name.startswith("ft:"):
        short = name.rsplit(":", 1)[-1]
        if re.fullmatch(r"[0-9a-f]{8}", short):
            jobs = job_list(owner=owner, status=JobStatus.SUCCEEDED).filter(id__startswith=short)
            for job in jobs.select_related("owner", "adapter", "base_model"):
                if job_api_model(job) == name and hasattr(job, "adapter"):
                    return job.base_model, job
        return None
    base = base_model_named(owner=owner, name=name)
    return (base, None) if base is not None else None


def job_device(job: FineTuneJob) -> str | None:
    """What the job trained on, "cpu" or "cuda", from the engine's setup event; None before it says."""
    for message in job_events(job=job).filter(kind="setup").order_by("id").values_list("message", flat=True):
        found = re.search(r"\bon (cpu|cuda)\b", message)
        if found:
            return found.group(1)
    return None


def job_reward_span(job: FineTuneJob) -> tuple[float | None, float | None]:
    """A reinforcement job's first and last mean reward of the tried answers (None where it logged none)."""
    rewards = [p.extra.get("reward") for p in metric_points(job=job).only("step", "extra")]
    kept = [r for r in rewards if r is not None]
    return (kept[0], kept[-1]) if kept else (None, None)


def job_loss_span(job: FineTuneJob) -> tuple[float | None, float | None]:
    """The job's first and last logged training loss (None where it logged none)."""
    points = metric_points(job=job).filter(train_loss__isnull=False)
    first = points.values_list("train_loss", flat=True).first()
    last = points.order_by("-step").values_list("train_loss", flat=True).first()
    return first, last
