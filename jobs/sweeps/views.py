"""Sweep pages: the list, the "Find settings" form and a sweep's page (live leaderboard, every trial's metric per
step on one chart, which settings matter, Promote). Thin: the form validates, services write; the page's script
follows the sweep through /api/v1/sweeps/<id>/ like any client."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from jobs.accounts.limits import QuotaExceeded
from jobs.base_models.selectors import base_model_find
from jobs.datasets.selectors import dataset_find
from jobs.sweeps import selectors, services
from jobs.sweeps.forms import SweepForm
from worker.errors import InputError

# The job form's Auto preset: a small sweep over what matters most for a LoRA job.
AUTO_SPACE = {"learning_rate": [1e-4, 3e-3, "log"], "rank": [8, 16, 32], "epochs": [1, 3]}
AUTO_TRIALS = 6

SWEEP_ACTIONS = {
    "pause": (services.sweep_pause, "Sweep paused: no new trial; the running ones pause at a checkpoint."),
    "resume": (services.sweep_resume, "Sweep resumed."),
    "cancel": (services.sweep_cancel, "Sweep cancelled; the finished trials are kept."),
    "promote": (services.sweep_promote, "The best trial's adapter is the sweep's result now."),
}


@login_required
def sweep_list(request):
    return render(request, "sweeps/sweep_list.html", {"sweeps": selectors.sweep_list(owner=request.user)[:100]})


@login_required
def sweep_new(request):
    form = SweepForm(request.POST or None, owner=request.user, initial={"dataset": request.GET.get("dataset")})
    if request.method == "POST" and form.is_valid():
        space = form.space()
        if space is not None:
            data = form.cleaned_data
            try:
                sweep = services.sweep_create(
                    owner=request.user,
                    dataset=dataset_find(owner=request.user, dataset_id=data["dataset"]),
                    base_model=base_model_find(data["base_model"], owner=request.user),
                    space=space,
                    trials=data["trials"],
                    minutes=data["minutes"],
                    parallelism=data["parallelism"],
                    metric=data["metric"],
                    pruner=data["pruner"],
                    name=data["name"],
                )
            except InputError as exc:
                form.show_error(exc.field, exc.message)
            except QuotaExceeded as exc:
                form.add_error(None, exc.message)
            else:
                return redirect("sweep-detail", sweep_id=sweep.id)
    status = 400 if request.method == "POST" else 200
    return render(request, "sweeps/sweep_new.html", {"form": form}, status=status)


@login_required
def sweep_detail(request, sweep_id):
    sweep = selectors.sweep_get(owner=request.user, sweep_id=sweep_id)
    return render(request, "sweeps/sweep_detail.html", {"sweep": sweep, "report": selectors.sweep_report(sweep)})


@login_required
@require_POST
def sweep_action(request, sweep_id, action):
    sweep = selectors.sweep_get(owner=request.user, sweep_id=sweep_id)
    act, note = SWEEP_ACTIONS[action]
    try:
        act(sweep=sweep, by=request.user)
    except (services.SweepStateError, InputError, QuotaExceeded) as exc:
        messages.error(request, str(exc))
    else:
        messages.info(request, note)
    return redirect("sweep-detail", sweep_id=sweep.id)


def _whole(value: str, *, field: str) -> int | None:
    if not (value or "").strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(field, f"must be a whole number (you gave {value!r})") from None


@login_required
@require_POST
def sweep_auto(request):
    """The job form's Auto preset: instead of one job, a small sweep on the form's dataset and base model (and
    method), its budget in trials or minutes."""
    post = request.POST
    try:
        dataset = dataset_find(owner=request.user, dataset_id=post.get("dataset"))
        if dataset is None:
            raise InputError("dataset", "pick the dataset to train on")
        base = base_model_find(post.get("base_model"), owner=request.user)
        if base is None:
            raise InputError("base_model", "pick a base model")
        minutes = _whole(post.get("auto_minutes", ""), field="auto_minutes")
        trials = _whole(post.get("auto_trials", ""), field="auto_trials") or AUTO_TRIALS
        method = post.get("method") or "supervised"
        sweep = services.sweep_create(
            owner=request.user,
            dataset=dataset,
            base_model=base,
            space=AUTO_SPACE,
            fixed={} if method == "supervised" else {"method": method},
            trials=trials if minutes is None else services.MAX_TRIALS_AUTO,
            minutes=minutes,
            name=(post.get("name") or "").strip() or f"Auto · {dataset.name}",
        )
    except (InputError, QuotaExceeded) as exc:
        messages.error(request, f"Auto could not start: {exc}")
        return redirect(f"{reverse('job-new')}?dataset={post.get('dataset', '')}")
    return redirect("sweep-detail", sweep_id=sweep.id)
