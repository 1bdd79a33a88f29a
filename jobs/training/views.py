"""Job pages: the list, the form (with its live estimate), a job's page with its live stream,
several runs side by side, and the job's actions and downloads. Thin: forms validate, services write."""

from __future__ import annotations

from typing import cast

from asgiref.sync import sync_to_async
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from jobs.accounts.auth import request_user
from jobs.accounts.limits import QuotaExceeded
from jobs.common import events
from jobs.common.ids import is_uuid
from jobs.datasets.forms import UploadForm
from jobs.training import selectors, services
from jobs.training.downloads import adapter_download, merged_download
from jobs.training.exports import GGUF_ARCHITECTURES, export_download_url, export_status, merged_status
from jobs.training.files import job_evaluation
from jobs.training.form_start import dataset_kinds, form_start
from jobs.training.forms import JobForm, setting_rows
from jobs.training.live import job_channel, status_event
from jobs.training.models import TERMINAL_STATUSES, ExportFormat, FineTuneJob, JobStatus
from jobs.training.runs_table import loss_charts, runs_table
from jobs.training.summary import job_summary, kept_eval_loss, setting_applies
from worker.config import PREFERENCE_METHODS, TrainConfig
from worker.errors import InputError
from worker.memory_advice import OUT_OF_MEMORY, oom_suggestion
from worker.result_words import JobSummary, percent_words
from worker.serving_recipes import serving_name


@login_required
def job_list(request):
    """The jobs; for a user without any yet, a welcome that starts one from the demo dataset or an upload."""
    status = request.GET.get("status") or None
    first_time = not selectors.job_list(owner=request.user).exists()
    return render(
        request,
        "training/job_list.html",
        {
            "jobs": selectors.job_list(owner=request.user, status=status),
            "status": status,
            "statuses": JobStatus.values,
            "welcome": first_time,
            "upload_form": UploadForm() if first_time else None,
        },
    )


@login_required
def worker_list(request):
    """The live train workers and the train queue (why each of the viewer's jobs waits); the page's script
    refreshes them from /api/v1/workers/."""
    return render(request, "training/workers.html", selectors.worker_list(viewer=request.user))


@login_required
def job_new(request):
    """The job form; ?dataset=ID picks the dataset (and the method follows its data), ?from=JOB fills every field
    from that job ("New job from this"); ?method= and ?start_from= set those fields."""
    start = form_start(owner=request.user, params=request.GET)
    form = JobForm(request.POST or None, owner=request.user, initial=start.initial)
    dataset_field = cast(forms.ModelChoiceField, form.fields["dataset"])
    # A reload must not restore the choice by its position in a list that has since grown (a newer dataset).
    dataset_field.widget.attrs["autocomplete"] = "off"
    if not request.POST.get("dataset") if request.method == "POST" else start.dataset_missing:
        dataset_field.empty_label = "Pick a dataset"  # ask for it rather than show another one in its place
    has_data = dataset_field.queryset.exists()  # without any: the demo dataset and an upload, not a Start button
    context = {
        "form": form,
        "start": start,
        "dataset_kinds": dataset_kinds(owner=request.user),
        "has_data": has_data,
        "upload_form": None if has_data else UploadForm(),
    }
    if request.method == "POST":
        if form.is_valid():  # the job's plan, every rule checked
            job = services.job_create(plan=form.plan, name=form.cleaned_data["name"])
            return redirect("job-detail", job_id=job.id)
        chosen = form.cleaned_data.get("dataset")
        context.update(start=None, size_warning=chosen.size_warning if chosen is not None else "")
        return render(request, "training/job_new.html", context, status=429 if form.quota_exceeded else 400)
    chosen = start.initial.get("dataset")
    context["size_warning"] = chosen.size_warning if chosen is not None else ""
    return render(request, "training/job_new.html", context)


@login_required
def runs_compare(request):
    """Several jobs side by side: what each trained on and how (in plain words, the rows where they differ marked
    and, by default, alone), their loss curves (one chart per kind of loss) and their results."""
    ids = [i for i in request.GET.getlist("job") if is_uuid(i)][:8]
    jobs = list(selectors.job_list(owner=request.user).filter(id__in=ids))
    curves = {str(j.id): [[p.step, p.train_loss, p.eval_loss] for p in selectors.metric_points(job=j)] for j in jobs}
    parents = [j.config.get("start_from") for j in jobs]
    started_from = {
        str(j.id): j for j in selectors.job_list(owner=request.user).filter(id__in=[p for p in parents if is_uuid(p)])
    }
    rows = runs_table(jobs, devices=[selectors.job_device(j) for j in jobs], started_from=started_from)
    evaluations = [job_evaluation(j) for j in jobs]
    finals = [
        {
            "run": j.name or j.short_id,
            "loss": j.final_loss,
            "eval_loss": _kept_eval_loss(j, e),
            "adapter_exact": (e or {}).get("rates", {}).get("adapter", {}).get("exact"),
            "exact_words": percent_words((e or {}).get("rates", {}).get("adapter", {}).get("exact")),
            "preference_words": percent_words((e or {}).get("accuracy", {}).get("adapter")),
        }
        for j, e in zip(jobs, evaluations)
    ]
    methods = [j.config.get("method", "supervised") for j in jobs]
    return render(
        request,
        "training/runs_compare.html",
        {
            "jobs": jobs,
            "rows": rows,
            "differing": sum(row.differs for row in rows),
            "finals": finals,
            "any_preference": any(m in PREFERENCE_METHODS for m in methods),
            "loss_charts": loss_charts(methods),
            "series": [
                {"id": str(j.id), "label": j.name or j.short_id, "method": m, "points": curves[str(j.id)]}
                for j, m in zip(jobs, methods)
            ],
        },
    )


def _kept_eval_loss(job: FineTuneJob, evaluation: dict | None) -> float | None:
    """The eval loss of the job's kept adapter, as its page and Compare runs show it."""
    return kept_eval_loss(
        evaluation=evaluation,
        eval_points=selectors.job_eval_losses(job=job),
        keep_best=bool(job.config.get("keep_best", True)),
    )


def estimate_json(est, dataset=None) -> dict:
    """The estimate as the job form shows it: with `dataset`, its too-few warning first (a warning before the job
    starts, not a refusal; the REST estimate's warnings are the plan's own)."""
    size_warning = [dataset.size_warning] if dataset is not None and dataset.size_warning else []
    return {
        "trainable_params": est.trainable_params,
        "total_params": est.total_params,
        "trainable_percent": est.trainable_percent,
        "adapter_mb": est.adapter_mb,
        "memory_mb": est.memory_mb,
        "breakdown": est.breakdown,
        "steps": est.steps,
        "seconds": est.seconds,
        "fits": est.fits,
        "advice": est.advice,
        "targets": est.targets,
        "memory_limit_mb": est.memory_limit_mb,
        "memory_limit_of": est.memory_limit_of,
        "lengths_known": est.lengths_known,
        "advice_changes": est.advice_changes,
        "warnings": size_warning + list(est.warnings),
        "seconds_source": est.seconds_source,
    }


@login_required
@require_POST
def job_estimate(request):
    """The job form's pre-flight estimate (JSON): the same form and plan, without the refusal."""
    form = JobForm(request.POST, owner=request.user, refuse=False)
    valid = form.is_valid()
    if form.estimate is not None:
        return JsonResponse(
            {
                "estimate": estimate_json(form.estimate, dataset=form.cleaned_data.get("dataset")),
                "errors": form.errors.get_json_data(),
            },
            status=200 if valid else 400,
        )
    return JsonResponse({"errors": form.errors.get_json_data()}, status=400)


@login_required
def job_detail(request, job_id):
    job = selectors.job_get(owner=request.user, job_id=job_id)
    succeeded = job.status == JobStatus.SUCCEEDED
    evaluation = job_evaluation(job) if succeeded else None
    device = selectors.job_device(job)
    return render(
        request,
        "training/job_detail.html",
        {
            "job": job,
            "config": job.config,
            "settings": [row for row in setting_rows(job.config) if setting_applies(row[0], job.config, device)],
            "summary": _summary(job, evaluation) if succeeded else None,
            "events": reversed(job.events.order_by("-id")[:50]),
            "api_model": selectors.job_api_model(job),
            "api_base": request.build_absolute_uri("/v1"),
            "preference": job.config.get("method", "supervised") in PREFERENCE_METHODS,
            "reinforcement": job.config.get("method") == "reinforcement",
            "suggestion": _oom_suggestion(job),
            "waiting": selectors.job_wait_reason(job=job),
            "merged": merged_status(job) if succeeded else None,
            "evaluation": evaluation,
            "kept_eval_loss": _kept_eval_loss(job, evaluation) if evaluation else None,
            "adapter": getattr(job, "adapter", None) if succeeded else None,
            **(_export_area(request, job) if succeeded and job.has_adapter else {}),
        },
    )


# The quantizations the page offers, in plain words.
GGUF_CHOICES = (
    ("f16", "f16 — full quality, the largest file"),
    ("bf16", "bf16 — full quality for bf16 models, same size as f16"),
    ("q8_0", "q8_0 — half the size, nearly the same answers"),
    ("q4_k_m", "q4_k_m — a quarter of the size, slightly worse answers"),
)


def _export_area(request, job: FineTuneJob) -> dict:
    """The Export card: the GGUF exports with their status, the quantizations, and the serving recipes."""
    from worker.gguf_export import quantization_available

    rows = [
        {"row": row, "status": export_status(row), "download": export_download_url(row)}
        for row in selectors.export_list(owner=request.user, job_id=job.id).exclude(format=ExportFormat.MERGED)
    ]
    architecture = job.base_model.architecture
    gguf = not architecture or architecture in GGUF_ARCHITECTURES
    recipes = selectors.job_serving_recipes(job, api_base=request.build_absolute_uri("/v1"))
    return {
        "exports": rows,
        "gguf_supported": gguf,
        "gguf_choices": GGUF_CHOICES,
        "q4_available": quantization_available("q4_k_m"),
        # llama.cpp and Ollama run the GGUF export, which only a Llama-architecture base has.
        "recipes": recipes if gguf else [r for r in recipes if r.key not in ("llama-cpp", "ollama")],
        "serving_name": serving_name(job.name, job.short_id),
        "publishes": list(selectors.publish_list(owner=request.user, job_id=job.id)[:10]),
    }


def _summary(job: FineTuneJob, evaluation: dict | None) -> JobSummary:
    if job.config.get("method") == "reinforcement":
        first, last = selectors.job_reward_span(job)
        return job_summary(
            evaluation=evaluation, steps=job.step, seconds=job.run_seconds, first_reward=first, last_reward=last
        )
    first, last = selectors.job_loss_span(job)
    return job_summary(evaluation=evaluation, steps=job.step, seconds=job.run_seconds, first_loss=first, last_loss=last)


def _oom_suggestion(job: FineTuneJob) -> dict | None:
    if job.status != JobStatus.FAILED or job.error_code != OUT_OF_MEMORY:
        return None
    return oom_suggestion(TrainConfig.from_dict(job.config)) or None


JOB_ACTIONS = {
    "cancel": (services.job_cancel, "Cancel requested: the job stops before its next step."),
    "pause": (services.job_pause, "Pause requested: a checkpoint is saved before the next step."),
    "resume": (services.job_resume, "Queued again: training continues from the last checkpoint."),
    "retry": (services.job_retry, "Started a new job with the same data and settings."),
}


@login_required
@require_POST
def job_delete(request, job_id):
    """Delete an ended job and its files (the page asks first)."""
    job = selectors.job_get(owner=request.user, job_id=job_id)
    try:
        services.job_delete(job=job, by=request.user)
    except services.JobStateError as exc:
        messages.error(request, str(exc))
        return redirect("job-detail", job_id=job.id)
    messages.info(request, f"Deleted the job {job.name or job.short_id} and its files.")
    return redirect("job-list")


@login_required
@require_POST
def job_action(request, job_id, action):
    """Cancel, pause, resume or retry (as it was, or with the suggested lower-memory settings)."""
    job = selectors.job_get(owner=request.user, job_id=job_id)
    act, note = JOB_ACTIONS[action]
    kwargs = {}
    if action == "retry" and request.POST.get("suggested") and _oom_suggestion(job):
        kwargs["config"] = TrainConfig.from_dict({**job.config, **_oom_suggestion(job)})
    try:
        result = act(job=job, by=request.user, **kwargs)
    except (services.JobStateError, InputError, QuotaExceeded) as exc:
        messages.error(request, str(exc))
        return redirect("job-detail", job_id=job.id)
    messages.info(request, note)
    return redirect("job-detail", job_id=result.id)


@login_required
def job_download(request, job_id):
    return adapter_download(selectors.job_get(owner=request.user, job_id=job_id))


@login_required
def job_merged(request, job_id):
    """POST: start the merged export. GET: download it once ready."""
    job = selectors.job_get(owner=request.user, job_id=job_id)
    if request.method != "POST":
        return merged_download(job)
    if request.POST.get("delete"):
        try:
            services.merged_export_delete(job=job, by=request.user)
        except services.JobStateError as exc:
            messages.error(request, str(exc))
        else:
            messages.info(request, "Deleted the merged model; the adapter stays.")
        return redirect("job-detail", job_id=job.id)
    try:
        state = services.adapter_merge_request(job=job, by=request.user)
    except services.JobStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.info(
            request,
            "The merged model is ready."
            if state == "ready"
            else "Merging the adapter into the base model; the download appears here when ready.",
        )
    return redirect("job-detail", job_id=job.id)


@login_required
@require_POST
def job_export(request, job_id):
    """Ask for a GGUF export from the job page's Export card (the page follows it through /api/v1/)."""
    job = selectors.job_get(owner=request.user, job_id=job_id)
    try:
        services.export_request(
            job=job,
            by=request.user,
            format=request.POST.get("format", ""),
            quantization=request.POST.get("quantization"),
        )
    except (services.JobStateError, InputError, QuotaExceeded) as exc:
        messages.error(request, str(exc))
    else:
        messages.info(request, "Exporting on the background worker; the download appears in the Export card.")
    return redirect(reverse("job-detail", args=[job.id]) + "#export")


async def job_events(request, job_id):
    """Loss points after Last-Event-ID (or ?after=), then live ones, then the final status
    (a session or a Bearer API key)."""
    user = await request_user(request)
    if user is None:
        raise Http404("sign in first")
    job = await sync_to_async(selectors.job_get)(owner=user, job_id=job_id)
    try:
        after = int(request.headers.get("Last-Event-ID") or request.GET.get("after") or 0)
    except ValueError:
        after = 0
    sent = {"step": after}

    @sync_to_async
    def replay():
        fresh = FineTuneJob.objects.get(id=job.id)
        items = [("metric", p.as_event(), p.step) for p in selectors.metric_points(job=fresh, after_step=after)]
        items.append(("status", status_event(fresh), None))
        return items

    def on_message(kind, data):
        if kind == "metric":
            if data["step"] <= sent["step"]:
                return [], False
            sent["step"] = data["step"]
            return [events.sse("metric", data, data["step"])], False
        if kind == "status":
            return [events.sse("status", data)], data["status"] in TERMINAL_STATUSES
        return [events.sse(kind, data)], False

    return events.stream_refused(user) or events.event_stream(
        events.follow(job_channel(job.id), replay, on_message, user=user)
    )
