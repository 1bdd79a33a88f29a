"""A dataset's leaderboard (jobs.benchmarks.leaderboard) from constructed rows: the order for each kind of metric
(ties share a rank, missing values and unfinished, pruned or failed runs after the finished ones), the settings the
runs differ on marked, the benchmark and judge columns, owner isolation, a 400 for an unknown metric, and the page
with its Compare and Chat links."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.arena.models import Judgement
from jobs.benchmarks.leaderboard import dataset_leaderboard
from jobs.benchmarks.models import BenchmarkRun
from jobs.common.storage import media_path
from jobs.sweeps.models import Sweep, SweepTrial
from jobs.training.models import Adapter, FineTuneJob, JobStatus, MetricPoint
from jobs.training.selectors import ft_model_id
from worker.errors import InputError

START = timezone.now() - timedelta(days=1)


@pytest.fixture
def make_job(user, dataset, base_model):
    made: list[FineTuneJob] = []

    def make(name, *, status=JobStatus.SUCCEEDED, evaluation=None, owner=None, points=(), **config):
        job = FineTuneJob.objects.create(
            owner=owner or user,
            name=name,
            dataset=dataset,
            dataset_name=dataset.name,
            base_model=base_model,
            config={"rank": 8, "learning_rate": 0.0002, **config},
            status=status,
        )
        # Created one after another, a minute apart: the older of two equal runs is listed first.
        FineTuneJob.objects.filter(id=job.id).update(created=START + timedelta(minutes=len(made)))
        made.append(job)
        if status == JobStatus.SUCCEEDED:
            Adapter.objects.create(
                job=job, folder=f"jobs/{job.id}/adapter", zip_file="x.zip", size_bytes=1, sha256="0" * 64
            )
        if evaluation is not None:
            path = media_path(f"jobs/{job.id}/evaluation.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(evaluation))
        for step, (loss, best) in enumerate(points, start=1):
            MetricPoint.objects.create(job=job, step=step, eval_loss=loss, extra={"best": best})
        return FineTuneJob.objects.get(id=job.id)

    return make


def loss(value):
    return {"loss": {"base": 2.0, "adapter": value}}


def exact(value):
    return {"rates": {"adapter": {"exact": value}}}


def board_of(user, dataset, metric=None):
    board = dataset_leaderboard(owner=user, dataset=dataset, metric=metric)
    return [(e.job.name, e.rank) for e in board.entries], board


def test_eval_loss_ranks_lowest_first_ties_share_a_rank_and_the_rest_follow_unranked(user, dataset, make_job):
    make_job("failed", status=JobStatus.FAILED)
    make_job("a", evaluation=loss(0.5))
    make_job("pruned", status=JobStatus.PRUNED, points=[(0.1, True)])  # better than all, but stopped early
    make_job("b", evaluation=loss(0.3))
    make_job("no-value")
    make_job("c", evaluation=loss(0.3))  # ties with b, made later
    make_job("from-points", points=[(0.6, True), (0.4, True), (0.35, False)])  # keep best: 0.4
    make_job("running", status=JobStatus.RUNNING, points=[(0.2, False)])
    order, board = board_of(user, dataset)
    assert order == [
        ("b", 1),
        ("c", 1),
        ("from-points", 3),
        ("a", 4),
        ("no-value", None),  # finished without the value: after the ranked, before the unfinished
        ("pruned", None),  # 0.1, stopped early: after every finished run, before...
        ("running", None),  # ... 0.2
        ("failed", None),
    ]
    assert board.metric.direction == "lower" and "Lower is better" in board.metric.hint
    assert [e.value_text for e in board.entries][:4] == ["0.3000", "0.3000", "0.4000", "0.5000"]


def test_exact_match_ranks_highest_first_and_missing_last(user, dataset, make_job):
    make_job("low", evaluation={**loss(0.1), **exact(0.25)})
    make_job("none", evaluation=loss(0.2))
    make_job("high", evaluation=exact(0.75))
    make_job("tie", evaluation=exact(0.75))
    order, board = board_of(user, dataset, "exact_match")
    assert order == [("high", 1), ("tie", 1), ("low", 3), ("none", None)]
    assert board.entries[0].value_text == "75.0 %" and board.metric.direction == "higher"


def run(user, job, results, *, status=BenchmarkRun.Status.READY, minutes=0):
    made = BenchmarkRun.objects.create(
        owner=user, job=job, base_model=job.base_model, suites=["general-skills"], limit=10, status=status,
        results=results,
    )  # fmt: skip
    BenchmarkRun.objects.filter(id=made.id).update(created=START + timedelta(minutes=minutes))
    return made


def task(name, base, adapted, general=True):
    side = lambda v: {"value": v, "stderr": 0.05, "low": v - 0.1, "high": v + 0.1}  # noqa: E731
    return {"task": name, "suite": "general-skills", "metric": "acc", "general": general, "examples": 10,
            "unavailable": None, "base": side(base), "adapted": side(adapted)}  # fmt: skip


def test_a_benchmark_task_ranks_by_the_adapted_score_or_its_change_from_the_latest_finished_run(
    user, dataset, make_job, settings
):
    settings.BENCHMARK_FORGET_MARGIN = 5
    first, second, third = make_job("first"), make_job("second"), make_job("third")
    run(user, first, [task("sums", 0.5, 0.9)], minutes=1)
    run(user, second, [task("sums", 0.9, 0.1)], minutes=1)  # older: the next run replaces it
    run(user, second, [task("sums", 0.2, 0.8)], minutes=2)
    run(user, second, [], status=BenchmarkRun.Status.RUNNING, minutes=3)  # not finished: ignored for the value
    order, board = board_of(user, dataset, "benchmark:sums")
    assert order == [("first", 1), ("second", 2), ("third", None)]
    assert board.entries[1].benchmark["tasks"][0]["adapted"] == 0.8
    assert "sums: 20.0 % → 80.0 % (+60.0 points)" in board.entries[1].benchmark["tasks"][0]["words"]
    assert board.entries[2].benchmark is None
    order, board = board_of(user, dataset, "benchmark_change:sums")
    assert order == [("second", 1), ("first", 2), ("third", None)]
    assert board.entries[0].value_text == "+60.0 points"
    assert {m.name for m in board.metrics} >= {"eval_loss", "exact_match", "benchmark:sums", "benchmark_change:sums"}
    run(user, third, [task("sums", 0.9, 0.5)], minutes=4)  # lost 40 points on a general task
    _, board = board_of(user, dataset, "benchmark:sums")
    assert (
        board.entries[2].job.name == "third" and "lost 40.0 points on sums" in board.entries[2].benchmark["warnings"][0]
    )
    with pytest.raises(InputError) as refused:
        dataset_leaderboard(owner=user, dataset=dataset, metric="benchmark:nope")
    assert refused.value.field == "metric"


def test_sweep_trials_are_marked_and_pruned_ones_follow_the_finished(user, dataset, base_model, make_job):
    sweep = Sweep.objects.create(
        owner=user, name="lr sweep", dataset=dataset, base_model=base_model, space={}, trials=3
    )
    pruned = make_job("t0", status=JobStatus.PRUNED, points=[(0.05, False)])
    done = make_job("t1", evaluation=loss(0.4))
    SweepTrial.objects.create(sweep=sweep, number=0, params={}, job=pruned, state=SweepTrial.State.PRUNED)
    SweepTrial.objects.create(sweep=sweep, number=1, params={}, job=done, state=SweepTrial.State.COMPLETE)
    make_job("plain", evaluation=loss(0.6))
    order, board = board_of(user, dataset)
    assert order == [("t1", 1), ("plain", 2), ("t0", None)]
    assert board.entries[0].sweep == {"id": str(sweep.id), "name": "lr sweep", "trial": 1}
    assert board.entries[1].sweep is None and board.entries[2].sweep["trial"] == 0


def test_the_settings_the_runs_differ_on_are_marked(user, dataset, make_job):
    make_job("slow", evaluation=loss(0.5), learning_rate=0.0001)
    make_job("fast", evaluation=loss(0.4), learning_rate=0.001)
    _, board = board_of(user, dataset)
    settings = {s["name"]: s for s in board.entries[0].settings}
    assert settings["learning_rate"]["differs"] and settings["learning_rate"]["text"] == "0.001"
    assert not settings["rank"]["differs"] and settings["rank"]["text"] == "8"  # a key setting, shown unmarked
    assert "dataset" not in settings  # the same on every run of one dataset's board
    assert not any(s["differs"] for n, s in settings.items() if n != "learning_rate")
    assert board.differing == [settings["learning_rate"]["label"]]


def test_judge_results_are_shown_from_each_runs_side(user, dataset, base_model, make_job):
    job, other = make_job("judged", evaluation=loss(0.3)), make_job("other", evaluation=loss(0.4))
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}], "round": None, "outcome": o} for i, o in enumerate("aaab")
    ]
    Judgement.objects.create(
        owner=user, model_a=ft_model_id(job), model_b=base_model.name, judge=base_model.name, source="prompts",
        rows=rows, status=Judgement.Status.DONE,
    )  # fmt: skip
    Judgement.objects.create(
        owner=user, model_a=ft_model_id(other), model_b=ft_model_id(job), judge=base_model.name, source="prompts",
        rows=rows, status=Judgement.Status.DONE,
    )  # fmt: skip
    Judgement.objects.create(  # not finished: not shown
        owner=user, model_a=ft_model_id(job), model_b=base_model.name, judge=base_model.name, source="prompts",
        rows=rows, status=Judgement.Status.RUNNING,
    )  # fmt: skip
    _, board = board_of(user, dataset)
    judged, other_entry = board.entries
    by_opponent = {j["opponent"]: j for j in judged.judge}
    assert set(by_opponent) == {base_model.name, ft_model_id(other)}
    assert by_opponent[base_model.name]["win_rate"] == 0.75 and by_opponent[base_model.name]["n"] == 4
    flipped = by_opponent[ft_model_id(other)]
    assert flipped["win_rate"] == 0.25 and flipped["ci_low"] < 0.25 < flipped["ci_high"] <= 1
    assert flipped["agreement"]["n"] == 0
    assert [j["win_rate"] for j in other_entry.judge] == [0.75]


def test_rest_ranks_refuses_an_unknown_metric_and_hides_other_owners(api, api_bob, user, other_user, dataset, make_job):
    best = make_job("best", evaluation=loss(0.2))
    make_job("worse", evaluation=loss(0.9))
    make_job("bobs", evaluation=loss(0.01), owner=other_user)  # (a row pointing at alice's dataset) never listed
    url = f"/api/v1/datasets/{dataset.id}/leaderboard/"
    answer = api.get(url)
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["metric"] == "eval_loss" and body["direction"] == "lower"
    assert [(e["name"], e["rank"], e["value"]) for e in body["entries"]] == [("best", 1, 0.2), ("worse", 2, 0.9)]
    top = body["entries"][0]
    assert top["job"] == str(best.id) and top["ft_model"] == ft_model_id(best) and top["status"] == "succeeded"
    assert top["chat_url"] == f"/jobs/{best.id}/compare/"
    assert f"job={body['entries'][1]['job']}" in body["entries"][1]["compare_url"]
    bad = api.get(url, {"metric": "accuracy"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "metric"
    assert "eval_loss" in bad.json()["error"]["message"]
    assert api_bob.get(url).status_code == 404


def test_the_page_ranks_with_a_metric_form_and_links_to_compare_and_chat(client_in, dataset, base_model, make_job):
    best = make_job("best", evaluation={**loss(0.2), **exact(0.5)}, learning_rate=0.001)
    worse = make_job("worse", evaluation={**loss(0.9), **exact(0.9)})
    failed = make_job("broken", status=JobStatus.FAILED)
    sweep = Sweep.objects.create(owner=best.owner, dataset=dataset, base_model=base_model, space={}, trials=1)
    html = client_in.get(f"/datasets/{dataset.id}/leaderboard/").content.decode()
    assert (
        html.index(f'data-job="{best.id}"')
        < html.index(f'data-job="{worse.id}"')
        < html.index(f'data-job="{failed.id}"')
    )
    assert f'href="/jobs/compare/?job={worse.id}&amp;job={best.id}"' in html  # this run beside the best
    assert f'href="/jobs/compare/?job={best.id}&amp;job={worse.id}"' in html  # the best: the top runs
    assert f'href="/jobs/{best.id}/compare/"' in html and f'href="/jobs/{failed.id}/compare/"' not in html
    assert '<mark class="differs"' in html and "Lower is better" in html
    assert '<select name="metric"' in html and '<option value="exact_match"' in html
    ranked = client_in.get(f"/datasets/{dataset.id}/leaderboard/", {"metric": "exact_match"}).content.decode()
    assert ranked.index(f'data-job="{worse.id}"') < ranked.index(f'data-job="{best.id}"')
    unknown = client_in.get(f"/datasets/{dataset.id}/leaderboard/", {"metric": "nope"})
    assert unknown.status_code == 200 and 'id="metric-error"' in unknown.content.decode()
    link = f'href="/datasets/{dataset.id}/leaderboard/"'
    assert link in client_in.get(f"/datasets/{dataset.id}/").content.decode()
    assert link in client_in.get(f"/sweeps/{sweep.id}/").content.decode()


def test_a_succeeded_jobs_evaluation_is_read_from_the_store_once(user, dataset, make_job):
    from unittest import mock

    from jobs.benchmarks import leaderboard

    make_job("done", evaluation=loss(0.2))
    make_job("pruned", status=JobStatus.PRUNED, evaluation=loss(0.1))
    with mock.patch.object(leaderboard, "job_evaluation", wraps=leaderboard.job_evaluation) as read:
        for _ in range(3):
            order, _ = board_of(user, dataset)
            assert order == [("done", 1), ("pruned", None)]
    assert [c.args[0].name for c in read.call_args_list].count("done") == 1  # kept: it never changes once done
