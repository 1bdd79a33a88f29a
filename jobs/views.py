"""HTML views and the server-sent-event streams. Thin: forms validate, services write."""
from __future__ import annotations

import json
import re
from pathlib import Path

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponseNotAllowed, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from jobs import events, selectors, services
from jobs.forms import JobForm, MappingForm, RenameForm, SignupForm, UploadForm
from jobs.models import TERMINAL_STATUSES, ChatAnswer, ChatSession, FineTuneJob, JobStatus
from worker.config import ConfigError, GenerationConfig, TrainConfig
from worker.data import DatasetError


def signup(request):
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user)
        return redirect("dataset-list")
    return render(request, "registration/signup.html", {"form": form})


@login_required
def home(request):
    return redirect("job-list")


def _dataset_page(request, *, form=None, mapping_form=None, problems=(), total=0, status=200):
    return render(request, "jobs/dataset_list.html", {
        "datasets": selectors.dataset_list(owner=request.user), "form": form or UploadForm(),
        "mapping_form": mapping_form, "problems": problems, "problem_total": total}, status=status)


@login_required
def dataset_list(request):
    if request.method != "POST":
        return _dataset_page(request)
    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _dataset_page(request, form=form, status=400)
    try:
        ds = services.dataset_create(owner=request.user, upload=form.cleaned_data["file"],
                                     name=form.cleaned_data["name"],
                                     drop_duplicates=form.cleaned_data["drop_duplicates"])
    except DatasetError as exc:
        return _dataset_page(request, form=form, problems=exc.messages(), total=exc.total, status=400)
    except services.MappingNeeded as need:
        mapping_form = MappingForm(columns=need.columns, initial={
            "token": need.token, "filename": need.filename, "name": form.cleaned_data["name"],
            "drop_duplicates": form.cleaned_data["drop_duplicates"]})
        return _dataset_page(request, form=form, mapping_form=mapping_form, status=200)
    messages.success(request, f"Uploaded {ds.name}: {ds.rows} examples ({ds.schema}, {ds.format}).")
    return redirect("dataset-detail", dataset_id=ds.id)


@login_required
@require_POST
def dataset_map(request):
    """Second step of an upload whose columns matched no schema."""
    columns = request.POST.getlist("columns")
    form = MappingForm(request.POST, columns=columns)
    if not form.is_valid():
        return _dataset_page(request, mapping_form=form, status=400)
    try:
        ds = services.dataset_create_mapped(owner=request.user, token=form.cleaned_data["token"],
                                            filename=form.cleaned_data["filename"], mapping=form.mapping(),
                                            name=form.cleaned_data["name"],
                                            drop_duplicates=form.cleaned_data["drop_duplicates"])
    except ConfigError as exc:
        form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        return _dataset_page(request, mapping_form=form, status=400)
    except DatasetError as exc:
        return _dataset_page(request, mapping_form=form, problems=exc.messages(), total=exc.total, status=400)
    messages.success(request, f"Uploaded {ds.name}: {ds.rows} examples (mapped columns).")
    return redirect("dataset-detail", dataset_id=ds.id)


@login_required
def dataset_detail(request, dataset_id):
    """The check page: counts, schema, examples as the model will see them, token lengths."""
    ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
    models = selectors.base_model_list()
    chosen = models.filter(id=request.GET.get("model")).first() if _is_uuid(request.GET.get("model")) else None
    chosen = chosen or models.first()
    try:
        max_length = min(131072, max(16, int(request.GET.get("max_length", 256))))
    except ValueError:
        max_length = 256
    report = selectors.dataset_token_report(dataset=ds, base_model=chosen, max_length=max_length) if chosen else None
    return render(request, "jobs/dataset_detail.html", {
        "ds": ds, "models": models, "chosen": chosen, "max_length": max_length, "report": report,
        "histogram": report.histogram() if report else None, "rename_form": RenameForm(initial={"name": ds.name}),
        "jobs": ds.jobs.all()[:20]})


def _is_uuid(value) -> bool:
    import uuid as _uuid

    try:
        _uuid.UUID(str(value))
        return True
    except ValueError:
        return False


@login_required
@require_POST
def dataset_rename(request, dataset_id):
    ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
    try:
        services.dataset_rename(dataset=ds, name=request.POST.get("name", ""))
    except ConfigError as exc:
        messages.error(request, f"Name {exc.message}.")
    return redirect("dataset-detail", dataset_id=ds.id)


@login_required
@require_POST
def dataset_delete(request, dataset_id):
    ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
    try:
        services.dataset_delete(dataset=ds)
    except services.DatasetInUse as exc:
        messages.error(request, str(exc))
        return redirect("dataset-detail", dataset_id=ds.id)
    messages.success(request, f"Deleted {ds.name}.")
    return redirect("dataset-list")


@login_required
def dataset_download(request, dataset_id):
    ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
    return FileResponse(open(services.media_path(ds.file), "rb"), as_attachment=True,
                        filename=ds.original_name or f"dataset{Path(ds.file).suffix}")


@login_required
@require_POST
def dataset_demo(request):
    ds = services.dataset_create_demo(owner=request.user)
    messages.success(request, f"Added the demo dataset ({ds.rows} examples). Now pick your settings.")
    return redirect(f"/jobs/new/?dataset={ds.id}")


@login_required
def job_list(request):
    status = request.GET.get("status") or None
    return render(request, "jobs/job_list.html", {
        "jobs": selectors.job_list(owner=request.user, status=status), "status": status,
        "statuses": JobStatus.values})


@login_required
def job_new(request):
    initial = {}
    wanted = request.GET.get("dataset")
    if _is_uuid(wanted):
        initial["dataset"] = selectors.dataset_list(owner=request.user).filter(id=wanted).first()
    form = JobForm(request.POST or None, owner=request.user, initial=initial)
    if request.method == "POST":
        if form.is_valid():
            try:
                job = services.job_create(owner=request.user, dataset=form.cleaned_data["dataset"],
                                          base_model=form.cleaned_data["base_model"], config=form.config,
                                          name=form.cleaned_data["name"], validation=form.validation)
            except ConfigError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
            else:
                return redirect("job-detail", job_id=job.id)
        return render(request, "jobs/job_new.html", {"form": form}, status=400)
    return render(request, "jobs/job_new.html", {"form": form})


@login_required
def runs_compare(request):
    """Several jobs' loss curves in one chart, with their settings and final metrics side by side."""
    ids = [i for i in request.GET.getlist("job") if _is_uuid(i)][:8]
    jobs = list(selectors.job_list(owner=request.user).filter(id__in=ids))
    curves = {str(j.id): [[p.step, p.train_loss, p.eval_loss] for p in selectors.metric_points(job=j)] for j in jobs}
    keys = ["rank", "alpha", "dropout", "target_preset", "qlora", "epochs", "learning_rate", "batch_size",
            "grad_accum", "max_seq_length", "use_rslora", "use_dora"]
    rows = [(k, [j.config.get(k) for j in jobs]) for k in keys]
    evaluations = [services.job_evaluation(j) for j in jobs]
    finals = [{"loss": j.final_loss,
               "eval_loss": next((p[2] for p in reversed(curves[str(j.id)]) if p[2] is not None), None),
               "adapter_exact": (e or {}).get("rates", {}).get("adapter", {}).get("exact")}
              for j, e in zip(jobs, evaluations)]
    return render(request, "jobs/runs_compare.html", {
        "jobs": jobs, "rows": rows, "finals": finals,
        "series": [{"id": str(j.id), "label": j.name or j.short_id, "points": curves[str(j.id)]} for j in jobs]})


def estimate_json(est) -> dict:
    return {"trainable_params": est.trainable_params, "total_params": est.total_params,
            "trainable_percent": est.trainable_percent, "adapter_mb": est.adapter_mb, "memory_mb": est.memory_mb,
            "breakdown": est.breakdown, "steps": est.steps, "seconds": est.seconds, "fits": est.fits,
            "advice": est.advice, "targets": est.targets, "memory_limit_mb": est.memory_limit_mb}


@login_required
@require_POST
def job_estimate(request):
    """The job form's pre-flight estimate, from the same form and validation (JSON)."""
    form = JobForm(request.POST, owner=request.user)
    valid = form.is_valid()
    if form.estimate is not None:
        return JsonResponse({"estimate": estimate_json(form.estimate), "errors": form.errors.get_json_data()},
                            status=200 if valid else 400)
    return JsonResponse({"errors": form.errors.get_json_data()}, status=400)


@login_required
def job_detail(request, job_id):
    job = selectors.job_get(owner=request.user, job_id=job_id)
    return render(request, "jobs/job_detail.html", {
        "job": job, "config": job.config, "events": job.events.order_by("-id")[:20],
        "suggestion": _oom_suggestion(job),
        "merged": services.merged_status(job) if job.status == JobStatus.SUCCEEDED else None,
        "evaluation": services.job_evaluation(job) if job.status == JobStatus.SUCCEEDED else None,
        "adapter": getattr(job, "adapter", None) if job.status == JobStatus.SUCCEEDED else None})


@login_required
@require_POST
def job_cancel(request, job_id):
    job = selectors.job_get(owner=request.user, job_id=job_id)
    try:
        services.job_cancel(job=job, by=request.user)
    except services.JobStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.info(request, "Cancel requested: the job stops before its next step.")
    return redirect("job-detail", job_id=job.id)


def _oom_suggestion(job: FineTuneJob) -> dict | None:
    from worker.engine import ADVICE_OOM, oom_suggestion

    if job.status != JobStatus.FAILED or not job.error.startswith(ADVICE_OOM[:13]):
        return None
    return oom_suggestion(TrainConfig.from_dict(job.config)) or None


@login_required
@require_POST
def job_action(request, job_id, action):
    """Pause, resume or retry (as it was, or with the suggested lower-memory settings)."""
    job = selectors.job_get(owner=request.user, job_id=job_id)
    act = {"pause": services.job_pause, "resume": services.job_resume, "retry": services.job_retry}[action]
    kwargs = {}
    if action == "retry" and request.POST.get("suggested") and _oom_suggestion(job):
        kwargs["config"] = TrainConfig.from_dict({**job.config, **_oom_suggestion(job)})
    try:
        result = act(job=job, by=request.user, **kwargs)
    except (services.JobStateError, ConfigError) as exc:
        messages.error(request, str(exc))
        return redirect("job-detail", job_id=job.id)
    notes = {"pause": "Pause requested: a checkpoint is saved before the next step.",
             "resume": "Queued again: training continues from the last checkpoint.",
             "retry": "Started a new job with the same data and settings."}
    messages.info(request, notes[action])
    return redirect("job-detail", job_id=result.id)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "adapter"


@login_required
def job_download(request, job_id):
    job = selectors.job_get(owner=request.user, job_id=job_id)
    adapter = getattr(job, "adapter", None)
    if job.status != JobStatus.SUCCEEDED or adapter is None:
        raise Http404("this job has no adapter")
    path = services.media_path(adapter.zip_file)
    return FileResponse(open(path, "rb"), as_attachment=True,
                        filename=f"{_slug(job.name or 'lora-' + job.short_id)}-adapter.zip",
                        content_type="application/zip")


@login_required
def job_merged(request, job_id):
    """POST: start the merged export. GET: download it once ready."""
    job = selectors.job_get(owner=request.user, job_id=job_id)
    if request.method == "POST":
        try:
            state = services.adapter_merge_request(job=job, by=request.user)
        except services.JobStateError as exc:
            messages.error(request, str(exc))
        else:
            messages.info(request, "The merged model is ready." if state == "ready" else
                          "Merging the adapter into the base model; the download appears here when ready.")
        return redirect("job-detail", job_id=job.id)
    if services.merged_status(job) != "ready":
        raise Http404("no merged model yet")
    return FileResponse(open(services.merged_zip_path(job), "rb"), as_attachment=True,
                        filename=f"{_slug(job.name or 'lora-' + job.short_id)}-merged.zip",
                        content_type="application/zip")


@login_required
def job_compare(request, job_id):
    """Side by side (two or three models on this job's base), blind A/B votes and the win-rate table."""
    from jobs.win_rate import CAPTION

    job = selectors.job_get(owner=request.user, job_id=job_id)
    others = selectors.compare_candidates(owner=request.user, base_model=job.base_model).exclude(id=job.id)
    candidates = [_candidate(None, job.base_model, checked=True)]
    if job.status == JobStatus.SUCCEEDED:
        candidates.append(_candidate(job, job.base_model, checked=True))
    candidates += [_candidate(other, job.base_model, checked=False) for other in others]
    return render(request, "jobs/compare.html", {
        "job": job, "defaults": GenerationConfig(), "candidates": candidates,
        "max_contestants": services.MAX_CONTESTANTS, "win_rate_caption": CAPTION,
        "win_rates": selectors.vote_win_rates(owner=request.user, base_model=job.base_model)})


def _candidate(job: FineTuneJob | None, base_model, *, checked: bool) -> dict:
    """A model the compare page offers: "base" or a job id as its key, with its display name."""
    return {"key": str(job.id) if job else services.BASE_CONTESTANT, "checked": checked,
            "name": selectors.model_identity(job=job, base_model=base_model)["name"]}


def _json_error(field: str, message: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": {"field": field, "message": message}}, status=status)


def _json_object(request, allowed: set[str]) -> dict | JsonResponse:
    """The request's JSON object, or a 400 naming what is wrong: not JSON, not an object, an unknown field."""
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return _json_error("body", "must be JSON")
    if not isinstance(body, dict):
        return _json_error("body", "must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        return _json_error(sorted(unknown)[0], "unknown field")
    return body


GENERATION_FIELDS = {"max_new_tokens", "temperature", "top_p", "seed", "system_prompt"}


@login_required
def job_compare_ask(request, job_id):
    """POST {prompt, session?, contestants?, blind?, max_new_tokens?, temperature?, top_p?, seed?,
    system_prompt?} -> the session, the round and its answers in screen order."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    job = selectors.job_get(owner=request.user, job_id=job_id)
    body = _json_object(request, GENERATION_FIELDS | {"prompt", "session", "contestants", "blind"})
    if isinstance(body, JsonResponse):
        return body
    session = None
    if body.get("session"):
        try:
            session = selectors.chat_session_get(owner=request.user, session_id=body["session"])
        except (Http404, ValueError, Exception):
            return _json_error("session", "unknown chat session", 404)
        if session.job_id != job.id:
            return _json_error("session", "that chat belongs to another job")
    if not isinstance(body.get("blind", False), bool):
        return _json_error("blind", "must be true or false")
    try:
        gen = GenerationConfig(**{k: v for k, v in body.items() if k in GENERATION_FIELDS})
        session, answers = services.chat_ask(owner=request.user, job=job, prompt=str(body.get("prompt", "")),
                                             generation=gen, session=session, contestants=body.get("contestants"),
                                             blind=body.get("blind", False))
    except ConfigError as exc:
        return _json_error(exc.field, exc.message)
    except TypeError as exc:
        return _json_error("body", str(exc))
    except services.JobStateError as exc:
        return _json_error("job", str(exc), 409)
    chat_round = answers[0].round
    return JsonResponse({"session": str(session.id), "round": str(chat_round.id), "blind": chat_round.blind,
                         "answers": {_answer_key(a, job): str(a.id) for a in answers},
                         "slots": selectors.chat_round_slots(chat_round=chat_round)}, status=201)


def _answer_key(answer: ChatAnswer, job: FineTuneJob) -> str:
    """How the ask response names an answer: its column letter in a blind round, else "base",
    "adapter" (this page's job) or the other job's id."""
    if answer.round.blind:
        return "ABC"[answer.position]
    if answer.job_id is None:
        return "base"
    return "adapter" if answer.job_id == job.id else str(answer.job_id)


@login_required
def chat_round_vote(request, round_id):
    """POST {choice: left|right|tie|both_bad} -> the vote, the revealed models and the new win-rate table."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    chat_round = selectors.chat_round_get(owner=request.user, round_id=round_id)
    body = _json_object(request, {"choice"})
    if isinstance(body, JsonResponse):
        return body
    try:
        vote = services.chat_vote(owner=request.user, chat_round=chat_round, choice=body.get("choice"))
    except ConfigError as exc:
        return _json_error(exc.field, exc.message)
    except services.ChatStateError as exc:
        return _json_error(exc.field, exc.message, 409)
    return JsonResponse({"vote": str(vote.id), "result": vote.result, "choice": body["choice"],
                         "slots": selectors.chat_round_slots(chat_round=chat_round),
                         "win_rates": selectors.vote_win_rates(owner=request.user, base_model=vote.base_model)},
                        status=201)


# --- server-sent events --------------------------------------------------------------------

def _event_stream(generator) -> StreamingHttpResponse:
    response = StreamingHttpResponse(generator, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _user_or_404(request):
    """The session user, or the owner of a valid `Authorization: Bearer` API key (for scripts)."""
    from jobs.auth import api_key_from_header, api_key_lookup

    raw = api_key_from_header(request.headers.get("Authorization", ""))
    if raw is not None:
        key = await sync_to_async(api_key_lookup)(raw)
        if key is not None:
            return key.owner
        raise Http404("unknown API key")
    user = await request.auser()
    if not user.is_authenticated:
        raise Http404("sign in first")
    return user


async def job_events(request, job_id):
    """Loss points after Last-Event-ID (or ?after=), then live ones, then the final status."""
    user = await _user_or_404(request)
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
        items.append(("status", {"status": fresh.status, "error": fresh.error, "step": fresh.step,
                                 "total_steps": fresh.total_steps}, None))
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

    return _event_stream(events.follow(events.job_channel(job.id), replay, on_message))


async def chat_events(request, session_id):
    """Text pieces of both sides of a comparison as they are generated."""
    user = await _user_or_404(request)
    session = await sync_to_async(selectors.chat_session_get)(owner=user, session_id=session_id)
    wanted = {a for a in request.GET.getlist("answer") if _is_uuid(a)}
    finished: set[str] = set()

    @sync_to_async
    def replay():
        items = []
        answers = ChatAnswer.objects.filter(session=session).select_related("round__vote")
        for a in answers.filter(id__in=wanted) if wanted else answers:
            if a.state == ChatAnswer.State.DONE:
                items.append(("done", {**selectors.answer_event_meta(a), "text": a.text}, None))
            elif a.state == ChatAnswer.State.FAILED:
                items.append(("error", {**selectors.answer_event_meta(a), "error": "generation failed"}, None))
        return items

    def on_message(kind, data):
        if wanted and data.get("answer") not in wanted:
            return [], False
        if kind in ("done", "error"):
            if data["answer"] in finished:
                return [], False
            finished.add(data["answer"])
        return [events.sse(kind, data)], bool(wanted) and finished >= wanted

    return _event_stream(events.follow(events.chat_channel(session.id), replay, on_message))


@login_required
@require_POST
def chat_stop(request, session_id):
    """The stop button: unfinished answers of this chat end now, keeping what they have said."""
    session = selectors.chat_session_get(owner=request.user, session_id=session_id)
    return JsonResponse({"unfinished": services.chat_stop(owner=request.user, session=session)})
