"""Dataset pages: the list with the upload form, the column-mapping step, the check page, rename,
delete, download and the one-click demo dataset. Thin: forms validate, services write."""

from __future__ import annotations

import json
from pathlib import Path

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from jobs.accounts.limits import QuotaExceeded
from jobs.base_models.selectors import base_model_find, base_model_list
from jobs.common.exceptions import Busy
from jobs.common.responses import file_download
from jobs.datasets import mapping as mapping_step
from jobs.datasets import selectors, services, token_profiles, uploads
from jobs.datasets.forms import MappingForm, RenameForm, UploadForm
from jobs.datasets.models import USEFUL_EXAMPLES, USEFUL_PAIRS, USEFUL_PROMPTS, UploadCheck
from worker.data.column_hints import SAMPLE_CHARS
from worker.data.problems import DatasetError
from worker.errors import InputError


def _dataset_page(request, *, form=None, mapping_form=None, problems=(), total=0, failed_file="", status=200):
    """The list with the upload form; after a refused upload, its problems under the file's name (a browser
    cannot re-fill a file input, so the page says which file to choose again; the other fields stay)."""
    return render(
        request,
        "user_datasets/dataset_list.html",
        {
            "datasets": selectors.dataset_list(owner=request.user),
            "form": form or UploadForm(),
            "mapping_form": mapping_form,
            "problems": problems,
            "problem_total": total,
            "failed_file": failed_file,
            "useful_examples": USEFUL_EXAMPLES,
            "useful_pairs": USEFUL_PAIRS,
            "useful_prompts": USEFUL_PROMPTS,
        },
        status=status,
    )


def _busy_page(request, exc, **forms):
    """The list again after a refusal for now (a quota, or Busy: every parse slot taken), 429 with Retry-After."""
    response = _dataset_page(request, status=429, **forms)
    if isinstance(exc, Busy):
        response["Retry-After"] = str(exc.retry_after)
    return response


@login_required
def dataset_list(request):
    if request.method != "POST":
        return _dataset_page(request)
    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _dataset_page(request, form=form, status=400)
    try:
        ds = uploads.dataset_upload(
            owner=request.user,
            upload=form.cleaned_data["file"],
            name=form.cleaned_data["name"],
            drop_duplicates=form.cleaned_data["drop_duplicates"],
        )
    except DatasetError as exc:
        return _dataset_page(
            request, form=form, problems=exc.messages(), total=exc.total, failed_file=exc.filename, status=400
        )
    except (QuotaExceeded, Busy) as exc:
        messages.error(request, exc.message)
        return _busy_page(request, exc, form=form)
    except mapping_step.MappingNeeded as need:
        mapping_form = MappingForm(
            columns=need.columns,
            samples=need.samples,
            initial={
                "token": need.token,
                "filename": need.filename,
                "name": form.cleaned_data["name"],
                "drop_duplicates": form.cleaned_data["drop_duplicates"],
            },
        )
        return _dataset_page(request, form=form, mapping_form=mapping_form, status=200)
    if isinstance(ds, UploadCheck):
        return redirect("upload-check", check_id=ds.id)
    messages.success(request, f"Uploaded {ds.name}: {ds.rows_in_words()} ({ds.schema}, {ds.format}).")
    return redirect("dataset-detail", dataset_id=ds.id)


class SamplesTooDeep(Exception):
    """The posted column samples nest deeper than Python's JSON parser goes (never what the page sends)."""


def _posted_samples(request, columns: list[str]) -> dict[str, list[str]]:
    """The sample values the mapping form carried (display only), so a refused mapping still shows them."""
    try:
        data = json.loads(request.POST.get("column_samples") or "{}")
    except RecursionError:
        raise SamplesTooDeep from None
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {c: [str(v)[:SAMPLE_CHARS] for v in data.get(c, [])[:3]] for c in columns if isinstance(data.get(c), list)}


@login_required
@require_POST
def dataset_map(request):
    """Second step of an upload whose columns matched no schema."""
    columns = request.POST.getlist("columns")
    try:
        samples = _posted_samples(request, columns)
    except SamplesTooDeep:
        form = MappingForm(request.POST, columns=columns)
        form.is_valid()
        form.add_error(None, "The column samples are nested too deeply to read; upload the file again.")
        return _dataset_page(request, mapping_form=form, status=400)
    form = MappingForm(request.POST, columns=columns, samples=samples)
    if not form.is_valid():
        return _dataset_page(request, mapping_form=form, status=400)
    try:
        ds = mapping_step.dataset_create_mapped(
            owner=request.user,
            token=form.cleaned_data["token"],
            filename=form.cleaned_data["filename"],
            mapping=form.mapping(),
            name=form.cleaned_data["name"],
            drop_duplicates=form.cleaned_data["drop_duplicates"],
        )
    except InputError as exc:
        visible = exc.field in form.fields and not form.fields[exc.field].widget.is_hidden
        form.add_error(exc.field if visible else None, exc.message)  # an expired token shows above the form
        return _dataset_page(request, mapping_form=form, status=400)
    except DatasetError as exc:
        return _dataset_page(request, mapping_form=form, problems=exc.messages(), total=exc.total, status=400)
    except Busy as exc:
        messages.error(request, exc.message)
        return _busy_page(request, exc, mapping_form=form)
    if isinstance(ds, UploadCheck):
        return redirect("upload-check", check_id=ds.id)
    messages.success(request, f"Uploaded {ds.name}: {ds.rows_in_words()} (mapped columns).")
    return redirect("dataset-detail", dataset_id=ds.id)


@login_required
def dataset_detail(request, dataset_id):
    """The check page: counts, schema, examples as the model will see them, token lengths. Prompts to reward are
    shown as the model answers them, measured against what max_length leaves after max_answer_tokens."""
    ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
    models = base_model_list(owner=request.user)
    chosen = base_model_find(request.GET.get("model"), owner=request.user) or models.first()
    max_length = _int_param(request, "max_length", 256, 16, 131072)
    answer_tokens = (
        _int_param(request, "answer_tokens", token_profiles.DEFAULT_ANSWER_TOKENS, 1, 4096) if ds.holds_prompts else 0
    )
    report, profile = (
        token_profiles.dataset_token_report(
            dataset=ds, model_path=chosen.path, max_length=max_length, answer_tokens=answer_tokens
        )
        if chosen
        else (None, None)
    )
    histogram = report.histogram() if report else None
    duplicates = ds.stats.get("duplicate_count", 0) if not ds.stats.get("dropped_duplicates") else 0
    return render(
        request,
        "user_datasets/dataset_detail.html",
        {
            "ds": ds,
            "models": models,
            "chosen": chosen,
            "max_length": max_length,
            "answer_tokens": answer_tokens,
            "report": report,
            "profile": profile,
            "histogram": histogram,
            "histogram_rows": _histogram_rows(histogram),
            "examples": _examples_page(request, report),
            "duplicates_left": duplicates,
            "made_from": selectors.dataset_find(owner=request.user, dataset_id=ds.stats.get("deduplicated_from")),
            "deduplicated_copy": selectors.dataset_deduplicated_copy(owner=request.user, dataset=ds)
            if duplicates
            else None,
            "rename_form": RenameForm(initial={"name": ds.name}),
            "jobs": ds.jobs.all()[:20],
        },
    )


EXAMPLES_PER_PAGE = 10


def _int_param(request, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter kept within [low, high]; the default when it is missing or not a number."""
    try:
        return min(high, max(low, int(request.GET.get(name, default))))
    except ValueError:
        return default


def _examples_page(request, report) -> dict | None:
    """One page (?page=N, 10 a page) of the rendered examples (pairs for preference data), with the
    addresses of the previous and next pages; the other query parameters (model, max length) are kept."""
    if report is None:
        return None
    items = report.sample_pairs() if report.is_preference else report.samples
    pages = max(1, -(-len(items) // EXAMPLES_PER_PAGE))
    try:
        number = min(pages, max(1, int(request.GET.get("page", 1))))
    except ValueError:
        number = 1
    start = (number - 1) * EXAMPLES_PER_PAGE

    def link(n: int) -> str | None:
        if not 1 <= n <= pages:
            return None
        query = request.GET.copy()
        query["page"] = str(n)
        return f"?{query.urlencode()}#examples"

    return {
        "items": items[start : start + EXAMPLES_PER_PAGE],
        "first": start + 1,
        "number": number,
        "pages": pages,
        "total": len(items),
        "previous": link(number - 1),
        "next": link(number + 1),
    }


def _histogram_rows(histogram: dict | None) -> list[tuple]:
    """The chart's non-empty bins as table rows: (from tokens, examples or chosen[, rejected])."""
    if not histogram:
        return []
    rejected = histogram.get("rejected_counts")
    rows = []
    for i, n in enumerate(histogram["counts"]):
        row = (histogram["edges"][i], n) + ((rejected[i],) if rejected is not None else ())
        if any(row[1:]):
            rows.append(row)
    return rows


@login_required
@require_POST
def dataset_rename(request, dataset_id):
    ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
    try:
        services.dataset_rename(dataset=ds, name=request.POST.get("name", ""))
    except InputError as exc:
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
@require_POST
def dataset_deduplicate(request, dataset_id):
    """The page's "Drop the N duplicates": a new dataset without them; the original is left as it is."""
    ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
    try:
        copy = services.dataset_deduplicate(dataset=ds)
    except (services.NoDuplicates, QuotaExceeded, Busy) as exc:
        messages.error(request, exc.message)
        return redirect("dataset-detail", dataset_id=ds.id)
    except DatasetError as exc:
        messages.error(request, str(exc))
        return redirect("dataset-detail", dataset_id=ds.id)
    messages.success(
        request,
        f"Made {copy.name}: {copy.rows} examples, "
        f"{copy.stats.get('dropped_duplicates', 0)} duplicates dropped. {ds.name} is unchanged.",
    )
    return redirect("dataset-detail", dataset_id=copy.id)


@login_required
def dataset_download(request, dataset_id):
    ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
    return file_download(ds.file, filename=ds.original_name or f"dataset{Path(ds.file).suffix}")


@login_required
@require_POST
def dataset_demo(request):
    try:
        ds = services.dataset_create_demo(owner=request.user)
    except (QuotaExceeded, Busy) as exc:
        messages.error(request, exc.message)
        return redirect("dataset-list")
    messages.success(request, f"Added the demo dataset ({ds.rows} examples). Now pick your settings.")
    return redirect(f"{reverse('job-new')}?dataset={ds.id}")


@login_required
def dataset_tokens_status(request, dataset_id):
    """How far the count of a dataset's tokens under a model's tokenizer is (the check page polls it)."""
    ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
    chosen = (
        base_model_find(request.GET.get("model"), owner=request.user) or base_model_list(owner=request.user).first()
    )
    if chosen is None:
        return JsonResponse({"status": "none"})
    profile = token_profiles.token_profile_request(dataset=ds, model_path=chosen.path)
    return JsonResponse(
        {"status": profile.status, "done": profile.done, "total": profile.total, "error": profile.error}
    )


@login_required
def upload_check(request, check_id):
    """A large upload's background check: its progress, then the dataset, the problems or the mapping step."""
    check = selectors.upload_check_get(owner=request.user, check_id=check_id)
    if check.status == UploadCheck.Status.READY and check.dataset_id:
        messages.success(request, f"Checked {check.filename}: {check.dataset.rows_in_words()}.")
        return redirect("dataset-detail", dataset_id=check.dataset_id)
    mapping_form = None
    if check.status == UploadCheck.Status.NEEDS_MAPPING:
        mapping_form = MappingForm(
            columns=check.columns,
            samples=check.column_samples,
            initial={
                "token": check.id.hex,
                "filename": check.filename,
                "name": check.name,
                "drop_duplicates": check.drop_duplicates,
            },
        )
    return render(request, "user_datasets/upload_check.html", {"check": check, "mapping_form": mapping_form})


@login_required
def upload_check_status(request, check_id):
    check = selectors.upload_check_get(owner=request.user, check_id=check_id)
    return JsonResponse(selectors.upload_check_json(check))
