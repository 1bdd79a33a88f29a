"""Merged exports are safe: attempts are counted in the job's JobExport row (a redelivery after the
worker died counts) and the merge gives up after three; a merge that cannot fit the memory budget is
refused before loading; the sweep re-queues stale ones, idempotently."""

import datetime as dt
import threading
import time
from unittest import mock

import pytest
import torch
from django.utils import timezone
from safetensors.torch import save_file

from jobs.common.storage import media_path, media_relative
from jobs.training import export_tasks
from jobs.training import services as job_services
from jobs.training.exports import MERGE_MAX_ATTEMPTS, merge_claim, merged_status
from jobs.training.files import merged_zip_path
from jobs.training.models import Adapter, FineTuneJob, JobExport, JobStatus
from jobs.training.plan import job_plan
from worker.config import TrainConfig
from worker.inference import estimate_base_bytes


class WorkerDied(BaseException):
    """Stands in for a SIGKILL mid-merge: nothing in the task gets to clean up."""


@pytest.fixture
def job(user, dataset, base_model):
    """A succeeded job with a small (fake) adapter on disk: enough to request, estimate and sweep merges."""
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig())
        )
    folder = media_path(f"jobs/{job.id}/adapter")
    folder.mkdir(parents=True)
    save_file(
        {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64)},
        str(folder / "adapter_model.safetensors"),
    )
    Adapter.objects.create(job=job, folder=media_relative(folder), zip_file="x.zip", size_bytes=1, sha256="0" * 64)
    FineTuneJob.objects.filter(id=job.id).update(status=JobStatus.SUCCEEDED)
    return FineTuneJob.objects.get(id=job.id)


def request_merge(api, job):
    with mock.patch("jobs.training.export_tasks.adapter_merge.delay") as delay:
        response = api.post(f"/api/v1/jobs/{job.id}/merged/")
    assert response.status_code == 202 and response.json()["status"] == "pending"
    return delay


def marker(job) -> dict:
    """The export's attempts and whether a run holds it, as its row records them."""
    row = JobExport.objects.get(job=job)
    return {"attempts": row.attempts, "running": row.status == JobExport.Status.RUNNING}


def pending(job) -> bool:
    """A merge is queued or running (the old `merge.pending` marker)."""
    return JobExport.objects.filter(job=job, status__in=["queued", "running"]).exists()


def age(job, seconds: float, *, settings=None) -> None:
    """Make the row's lease as if its last renewal (or queueing) was `seconds` ago."""
    from django.conf import settings as live

    lease = timezone.now() + dt.timedelta(seconds=live.MERGE_STALE_SECONDS - seconds)
    JobExport.objects.filter(job=job).update(lease_until=lease)


def set_marker(job, *, attempts: int, running: bool) -> None:
    JobExport.objects.filter(job=job).update(attempts=attempts, status="running" if running else "queued")


def events(job, kind="error") -> list[str]:
    return list(job.events.filter(kind=kind).values_list("message", flat=True))


def test_a_merge_too_big_for_the_budget_is_refused_before_loading(api, job, settings):
    need = export_tasks.merge_memory_need(job)
    settings.MERGE_MEMORY_BUDGET_MB = need // 2**20  # the tiny base needs 0.5 MB: a budget of 0 MB
    request_merge(api, job)
    with mock.patch("jobs.training.export_tasks.merge_adapter") as merge:
        assert export_tasks.adapter_merge(str(job.id)) == "refused"
    merge.assert_not_called()
    (message,) = events(job)
    assert message == (
        f"merged export refused: it needs about {need / 2**20:.1f} MB (the base's weights unquantized "
        f"and the adapter), more than MERGE_MEMORY_BUDGET_MB ({settings.MERGE_MEMORY_BUDGET_MB} MB)"
    )
    assert merged_status(job) == "none" and not pending(job)  # it can be asked again
    assert api.get(f"/api/v1/jobs/{job.id}/merged/").status_code == 404
    # A redelivered message finds nothing pending and does nothing.
    assert export_tasks.adapter_merge(str(job.id)) == "skipped"


def test_the_memory_estimate_is_the_base_unquantized_plus_the_adapter(job, tiny_llama, settings):
    need = export_tasks.merge_memory_need(job)
    base = estimate_base_bytes(str(tiny_llama), torch.float32)
    assert need == base + 8 * 64 * 4 and base > 0
    settings.MERGE_MEMORY_BUDGET_MB = need // 2**20 + 1  # just fits: the merge goes ahead
    job_services.adapter_merge_request(job=job, by=job.owner)

    def fake_merge(base_path, adapter_dir, out_dir):
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"weights")
        return out_dir

    with mock.patch("jobs.training.export_tasks.merge_adapter", side_effect=fake_merge):
        assert export_tasks.adapter_merge(str(job.id)) == "ready"
    assert merged_zip_path(job).is_file() and not pending(job)
    assert events(job, "export") == ["merged model ready"]


def test_a_merge_whose_worker_keeps_dying_gives_up_after_three_attempts(api, job, settings):
    request_merge(api, job)
    assert marker(job) == {"attempts": 0, "running": False}
    seen = []

    def dies(*args):
        seen.append(marker(job))
        raise WorkerDied

    with mock.patch("jobs.training.export_tasks.merge_adapter", side_effect=dies) as merge:
        for attempt in range(1, MERGE_MAX_ATTEMPTS + 1):
            with pytest.raises(WorkerDied):
                export_tasks.adapter_merge(str(job.id))
            assert marker(job) == {"attempts": attempt, "running": True}
            # Redelivered while the marker is fresh, the message cannot tell a live merge from a
            # dead one: it leaves it (and counts nothing) until the heartbeat is stale.
            assert export_tasks.adapter_merge(str(job.id)) == "in progress"
            assert marker(job)["attempts"] == attempt
            age(job, settings.MERGE_STALE_SECONDS + 1)  # the dead worker's heartbeat stopped
        assert export_tasks.adapter_merge(str(job.id)) == "failed"
    assert merge.call_count == MERGE_MAX_ATTEMPTS
    assert seen == [{"attempts": n, "running": True} for n in range(1, MERGE_MAX_ATTEMPTS + 1)]
    assert events(job) == [
        f"merged export gave up after {MERGE_MAX_ATTEMPTS} attempts "
        "(the worker stopped each time, perhaps out of memory)"
    ]
    assert merged_status(job) == "none"
    # Asked again later, it starts over with fresh attempts.
    request_merge(api, job)
    assert marker(job) == {"attempts": 0, "running": False}


def test_a_merge_that_fails_says_why_and_clears_the_marker(api, job):
    request_merge(api, job)
    with mock.patch("jobs.training.export_tasks.merge_adapter", side_effect=OSError("disk full")):
        assert export_tasks.adapter_merge(str(job.id)) == "failed"
    assert (
        events(job) == ["merged export failed: a file could not be read or written on the server"]
        and merged_status(job) == "none"
    )


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_keeps_a_long_merge_fresh(api, job, settings):
    settings.MERGE_STALE_SECONDS = 4  # heartbeat every second
    request_merge(api, job)

    def slow_merge(base_path, adapter_dir, out_dir):
        age(job, 100)
        time.sleep(1.6)
        lease = JobExport.objects.get(job=job).lease_until
        assert lease > timezone.now() + dt.timedelta(seconds=settings.MERGE_STALE_SECONDS - 1.5)  # renewed since
        assert export_tasks.merge_sweep() == 0  # alive: the sweep leaves it alone
        raise OSError("stop here")

    with mock.patch("jobs.training.export_tasks.merge_adapter", side_effect=slow_merge):
        assert export_tasks.adapter_merge(str(job.id)) == "failed"
    assert events(job) == ["merged export failed: a file could not be read or written on the server"]


# --- the sweep ----------------------------------------------------------------------------------------


def test_the_sweep_requeues_stale_merges_once_and_gives_up_after_three(api, job, settings):
    stale = settings.MERGE_STALE_SECONDS + 1
    request_merge(api, job)
    with mock.patch("jobs.training.export_tasks.adapter_merge.delay") as delay:
        assert export_tasks.merge_sweep() == 0  # freshly queued: its message is on its way
        age(job, stale)  # ... but it was lost
        assert export_tasks.merge_sweep() == 1
        delay.assert_called_once_with(str(job.id), JobExport.objects.get(job=job).id)
        assert marker(job) == {"attempts": 1, "running": False}  # the lost message counted
        assert export_tasks.merge_sweep() == 0  # a second sweep at once does nothing
        assert delay.call_count == 1

        # A worker that died mid-merge counted its attempt when it started: the sweep adds none.
        set_marker(job, attempts=1, running=True)
        age(job, stale)
        assert export_tasks.merge_sweep() == 1 and marker(job) == {"attempts": 1, "running": False}

        set_marker(job, attempts=2, running=True)
        age(job, stale)
        assert export_tasks.merge_sweep() == 1
        age(job, stale)  # lost once more: the third attempt
        assert export_tasks.merge_sweep() == 0
        assert delay.call_count == 3
    assert not pending(job) and merged_status(job) == "none"
    assert events(job) == [
        f"merged export gave up after {MERGE_MAX_ATTEMPTS} attempts "
        "(its work was lost each time: the worker stopped or the queue lost it)"
    ]


def test_the_sweep_leaves_a_finished_merge_alone(api, job, settings):
    request_merge(api, job)
    token = merge_claim(job)
    merged_zip_path(job).write_bytes(b"zip")
    from jobs.training.exports import merge_finish

    assert merge_finish(job, token, size_bytes=3)
    age(job, settings.MERGE_STALE_SECONDS + 1)
    with mock.patch("jobs.training.export_tasks.adapter_merge.delay") as delay:
        assert export_tasks.merge_sweep() == 0
        assert not pending(job) and merged_status(job) == "ready"
        assert JobExport.objects.get(job=job).size_bytes == 3
    assert delay.call_count == 0


def test_two_merge_workers_cannot_both_claim_the_export(api, job):
    request_merge(api, job)
    assert merge_claim(job) is not None
    assert merge_claim(job) is None  # held, its lease alive: the second run gets nothing
    assert marker(job) == {"attempts": 1, "running": True}


@pytest.mark.django_db(transaction=True)
def test_two_merge_workers_at_the_same_moment_get_one_claim(job):
    with mock.patch("jobs.training.export_tasks.adapter_merge.delay"):
        job_services.adapter_merge_request(job=job, by=job.owner)
    start, tokens = threading.Barrier(4), []

    def claim():
        from django.db import connection

        start.wait()
        try:
            tokens.append(merge_claim(job))
        finally:
            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len([t for t in tokens if t]) == 1 and marker(job) == {"attempts": 1, "running": True}


def test_a_merge_whose_claim_was_taken_over_records_nothing(api, job, settings):
    request_merge(api, job)

    def taken_over(base_path, adapter_dir, out_dir):
        JobExport.objects.filter(job=job).update(claim="another-run")  # the sweep gave it to another worker
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"weights")
        return out_dir

    with mock.patch("jobs.training.export_tasks.merge_adapter", side_effect=taken_over):
        assert export_tasks.adapter_merge(str(job.id)) == "lost"
    assert merged_status(job) == "pending" and events(job, "export") == []
