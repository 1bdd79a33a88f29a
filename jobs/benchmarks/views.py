"""The leaderboard page of one dataset: its runs ranked by the metric chosen in a plain GET form."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from jobs.benchmarks.leaderboard import DEFAULT_METRIC, dataset_leaderboard
from jobs.datasets.selectors import dataset_get
from worker.errors import InputError


@login_required
def dataset_leaderboard_page(request, dataset_id):
    """Every run on the dataset, best first; an unknown metric falls back to the default with its message shown."""
    dataset = dataset_get(owner=request.user, dataset_id=dataset_id)
    error = ""
    try:
        board = dataset_leaderboard(owner=request.user, dataset=dataset, metric=request.GET.get("metric"))
    except InputError as exc:
        error = exc.message
        board = dataset_leaderboard(owner=request.user, dataset=dataset, metric=DEFAULT_METRIC)
    return render(request, "benchmarks/leaderboard.html", {"board": board, "ds": dataset, "metric_error": error})
