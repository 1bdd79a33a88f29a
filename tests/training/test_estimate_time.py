"""The estimated time after a first job counts what the job spent outside its steps (loading, tokenizing, the
end-of-job evaluation), not the steps alone."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.training import selectors
from jobs.training.models import FineTuneJob, JobStatus, MetricPoint
from jobs.training.plan import job_plan
from worker.config import TrainConfig

pytestmark = pytest.mark.django_db


def finished_job(user, base_model, dataset, *, run_seconds, step_times):
    job = FineTuneJob.objects.create(
        owner=user,
        dataset=dataset,
        base_model=base_model,
        config=TrainConfig().to_dict(),
        status=JobStatus.SUCCEEDED,
        run_seconds=run_seconds,
        finished=timezone.now(),
    )
    start = timezone.now() - timedelta(hours=1)
    for step, at in enumerate(step_times, start=1):
        point = MetricPoint.objects.create(job=job, step=step, train_loss=1.0, tokens_per_s=100.0)
        MetricPoint.objects.filter(id=point.id).update(created=start + timedelta(seconds=at))
    return job


def test_a_jobs_time_outside_its_steps_is_measured_and_added(user, other_user, base_model, dataset, monkeypatch):
    assert selectors.measured_overhead_seconds(owner=user, base_model=base_model) is None
    # 4 steps 10 s apart: about 40 s of stepping in a 105 s run, so 65 s outside the steps.
    finished_job(user, base_model, dataset, run_seconds=105, step_times=[0, 10, 20, 30])
    assert selectors.measured_overhead_seconds(owner=user, base_model=base_model) == pytest.approx(65)
    assert selectors.measured_overhead_seconds(owner=other_user, base_model=base_model) is None, "owners only"
    config = TrainConfig(max_steps=4)
    est = job_plan(owner=user, dataset=dataset, base_model=base_model, config=config, fleet=[], refuse=False).estimate
    assert est.seconds_source == "measured"
    monkeypatch.setattr(selectors, "measured_overhead_seconds", lambda **kwargs: None)
    steps_only = job_plan(
        owner=user, dataset=dataset, base_model=base_model, config=config, fleet=[], refuse=False
    ).estimate
    assert est.seconds - steps_only.seconds == pytest.approx(65)
