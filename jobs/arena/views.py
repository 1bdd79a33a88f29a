"""The compare page (two or three models side by side, blind A/B votes, the win-rate table) and the
live stream of a chat's answers. The page's script talks to /api/v1/ like any client."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from jobs.accounts.auth import request_user
from jobs.arena import judgements, selectors, services
from jobs.arena.live import chat_channel
from jobs.arena.models import ChatAnswer
from jobs.arena.win_rate import CAPTION, RANGE_HINT
from jobs.base_models.selectors import base_model_list
from jobs.common import events
from jobs.common.exceptions import ProductError
from jobs.common.ids import is_uuid
from jobs.training.models import FineTuneJob, JobStatus
from jobs.training.selectors import job_api_model, job_get, job_list, jobs_with_adapter
from worker.config import GenerationConfig
from worker.data.problems import DatasetError
from worker.errors import InputError


@login_required
def job_compare(request, job_id):
    """Side by side (two or three models on this job's base), blind A/B votes and the win-rate table."""
    job = job_get(owner=request.user, job_id=job_id)
    others = jobs_with_adapter(owner=request.user, base_model=job.base_model).exclude(id=job.id)
    candidates = [_candidate(None, job.base_model, checked=True)]
    if job.has_adapter:
        candidates.append(_candidate(job, job.base_model, checked=True))
    candidates += [_candidate(other, job.base_model, checked=False) for other in others]
    return render(
        request,
        "arena/compare.html",
        {
            "job": job,
            "defaults": GenerationConfig(),
            "candidates": candidates,
            "max_contestants": services.MAX_CONTESTANTS,
            "win_rate_caption": CAPTION,
            "win_rate_range_hint": RANGE_HINT,
            "win_rates": selectors.vote_win_rates(owner=request.user, base_model=job.base_model, side_of=str(job.id)),
            "vote_counts": selectors.vote_counts(owner=request.user, base_model=job.base_model),
        },
    )


@login_required
@require_POST
def votes_dataset(request, job_id):
    """The compare page's "Make a preference dataset from my votes" (on this job's base model), without
    script; the page's script posts to /api/v1/votes/dataset/ instead and stays on the page."""
    job = job_get(owner=request.user, job_id=job_id)
    try:
        dataset, summary = services.votes_dataset_create(
            owner=request.user, name=request.POST.get("name", ""), base_model=job.base_model
        )
    except (ProductError, InputError, DatasetError) as exc:
        messages.error(request, getattr(exc, "message", str(exc)))
        return redirect("job-compare", job_id=job.id)
    messages.success(request, f"Made {dataset.name}: {services.votes_summary_text(summary)}")
    return redirect("dataset-detail", dataset_id=dataset.id)


def _candidate(job: FineTuneJob | None, base_model, *, checked: bool) -> dict:
    """A model the compare page offers: "base" or a job id as its key, with its display name."""
    return {
        "key": str(job.id) if job else services.BASE_CONTESTANT,
        "checked": checked,
        "name": selectors.model_identity(job=job, base_model=base_model)["name"],
    }


async def chat_events(request, session_id):
    """Text pieces of every answer of a comparison as they are generated (?answer= narrows it to
    those answers and ends once they are all done)."""
    user = await request_user(request)
    if user is None:
        raise Http404("sign in first")
    session = await sync_to_async(selectors.chat_session_get)(owner=user, session_id=session_id)
    wanted = {a for a in request.GET.getlist("answer") if is_uuid(a)}
    finished: set[str] = set()

    @sync_to_async
    def replay():
        items = []
        answers = ChatAnswer.objects.filter(session=session).select_related("round__vote")
        for a in answers.filter(id__in=wanted) if wanted else answers:
            if a.state == ChatAnswer.State.DONE:
                items.append(("done", {**selectors.answer_event_meta(a), "text": a.text, **a.stats}, None))
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

    return events.stream_refused(user) or events.event_stream(
        events.follow(chat_channel(session.id), replay, on_message, user=user)
    )


def _judge_models(*, owner, job: FineTuneJob) -> tuple[list[dict], list[dict]]:
    """The models a judgement on this job's page may compare (the base and the adapters on it) and the judges the
    owner may use (every ready base model and every adapted model of theirs), each as {name, label}."""
    adapters = jobs_with_adapter(owner=owner, base_model=job.base_model)
    compared = [{"name": job.base_model.name, "label": f"{job.base_model.name} (base)"}]
    compared += [_adapted(j) for j in adapters]
    judges = [{"name": b.name, "label": b.name} for b in base_model_list(owner=owner)]
    judges += [_adapted(j) for j in job_list(owner=owner, status=JobStatus.SUCCEEDED).filter(adapter__isnull=False)]
    return compared, judges


def _adapted(job: FineTuneJob) -> dict:
    """A succeeded job's adapted model as a judgement names it (its ft: id), with the job's name."""
    name = job_api_model(job) or ""
    return {"name": name, "label": f"{job.name or job.short_id} ({name})"}


@login_required
def job_judge(request, job_id):
    """Ask a judge model to compare two models on this job's base, and read its verdicts beside your votes.
    The form posts here (no script needed); the page's script follows a running judgement and redraws it."""
    job = job_get(owner=request.user, job_id=job_id)
    compared, judges = _judge_models(owner=request.user, job=job)
    errors: dict[str, str] = {}
    form = {
        "model_a": job_api_model(job) or "",
        "model_b": job.base_model.name,
        "judge": job.base_model.name,
        "source": "votes",
        "prompts": "",
        "count": "10",
        "max_answer_tokens": "128",
    }
    if request.method == "POST":
        if "cancel" in request.POST:
            judgement = selectors.judgement_get(owner=request.user, judgement_id=request.POST["cancel"])
            try:
                judgements.judgement_cancel(owner=request.user, judgement=judgement)
            except ProductError as exc:
                messages.error(request, exc.message)
            return redirect(f"{request.path}?judgement={judgement.id}")
        form.update({k: request.POST.get(k, "") for k in form})
        try:
            judgement = judgements.judgement_create(
                owner=request.user,
                model_a=form["model_a"],
                model_b=form["model_b"],
                judge=form["judge"],
                source=form["source"],
                prompts=[line for line in form["prompts"].splitlines() if line.strip()] or None,
                job=str(job.id),
                count=_whole(form["count"], "count"),
                max_answer_tokens=_whole(form["max_answer_tokens"], "max_answer_tokens"),
            )
        except (InputError, ProductError) as exc:
            field = (exc.field or "").split(".")[0]
            errors[field if field in form else "form"] = exc.message
        else:
            return redirect(f"{request.path}?judgement={judgement.id}")
    shown = report = None
    wanted = request.GET.get("judgement", "")
    if is_uuid(wanted):
        shown = selectors.judgement_get(owner=request.user, judgement_id=wanted)
        report = selectors.judgement_report(owner=request.user, judgement=shown)
    return render(
        request,
        "arena/judge.html",
        {
            "job": job,
            "compared": compared,
            "judges": judges,
            "form": form,
            "errors": errors,
            "max_prompts": judgements.MAX_PROMPTS,
            "max_answer_tokens": judgements.MAX_ANSWER_TOKENS,
            "recent": selectors.judgement_list(owner=request.user)[:10],
            "shown": shown,
            "report": report,
            "rows": report["rows"] if report else [],
        },
        status=400 if errors else 200,
    )


def _whole(text: str, field: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(field, "must be a whole number") from None
