"""Where the New job form starts: its first values from the link that opened it (?dataset=, ?from=, ?method=,
?start_from=) and from the data itself. The method follows the dataset (preference pairs: DPO on top of the
user's latest job on the same base; examples: supervised); the dataset is the one asked for, never another."""

from __future__ import annotations

from dataclasses import dataclass, field

from jobs.base_models.selectors import base_model_find
from jobs.common import blobs
from jobs.datasets.models import Dataset
from jobs.datasets.selectors import dataset_find, dataset_list
from jobs.training import selectors
from jobs.training.forms import clone_initial
from jobs.training.models import FineTuneJob, JobStatus
from worker.config import METHODS, PREFERENCE_METHODS
from worker.data.normalized import prompt_fields


@dataclass
class FormStart:
    """The form's first values and what the page says about them."""

    initial: dict
    summary: str = ""  # one sentence: what the job will train on, how, and from what
    notes: list[str] = field(default_factory=list)  # a choice made for the user, or a link that did not fit
    dataset_missing: bool = False  # the link's dataset is gone: the form asks for one instead of picking another


def latest_start_job(*, owner, base_model_id=None) -> FineTuneJob | None:
    """The owner's latest succeeded job with an adapter to build on (on `base_model_id` when given)."""
    jobs = selectors.job_list(owner=owner, status=JobStatus.SUCCEEDED).filter(adapter__isnull=False)
    if base_model_id:
        jobs = jobs.filter(base_model_id=base_model_id)
    for job in jobs.order_by("-created")[:20]:
        if job.config.get("init_lora_weights") != "pissa":  # a PiSSA adapter cannot be trained further
            return job
    return None


def form_start(*, owner, params) -> FormStart:
    """The New job form's first values from the query `params`: ?from=JOB fills every field from that job,
    ?dataset=ID picks the dataset, ?method= and ?start_from= override; otherwise the method follows the data."""
    start = FormStart(initial={})
    source = selectors.job_find(owner=owner, job_id=params.get("from"))
    if source is not None:
        start.initial = clone_initial(source)
        if "dataset" not in start.initial:
            start.dataset_missing = True
            start.notes.append(f"The dataset of {source.name or source.short_id} was deleted: pick one below.")
    if params.get("dataset"):
        wanted = dataset_find(owner=owner, dataset_id=params.get("dataset"))
        if wanted is None:
            start.initial.pop("dataset", None)
            start.dataset_missing = True
            start.notes = ["The dataset in the link does not exist (any more): pick one below."]
        else:
            start.initial["dataset"] = wanted
    dataset = start.initial.get("dataset")
    on_top_of = _follow_the_data(start, owner=owner, params=params, dataset=dataset, cloned=source is not None)
    if dataset is not None:
        start.summary = _summary(dataset, start.initial.get("method", "supervised"), on_top_of)
    return start


def _follow_the_data(start: FormStart, *, owner, params, dataset: Dataset | None, cloned: bool) -> FineTuneJob | None:
    """The method (asked for, or the one the data needs) and, for preference pairs, the job to build on
    (returned; None when the job starts a new adapter or keeps the cloned job's choice)."""
    initial = start.initial
    asked = params.get("method")
    if asked in METHODS:
        initial["method"] = asked
    elif dataset is not None and _method_kind(dataset.data_method) != _method_kind(initial.get("method") or ""):
        initial["method"] = dataset.data_method
        if cloned:
            start.notes.append(
                f"{dataset.name} holds {dataset.kind_label.lower()}: the method is now {initial['method']}."
            )
    base_id = (dataset.stats or {}).get("base_model") if dataset is not None else None
    job = selectors.job_find(owner=owner, job_id=params.get("start_from"))
    if job is None and not cloned and initial.get("method") in PREFERENCE_METHODS:
        job = latest_start_job(owner=owner, base_model_id=base_id)
    if job is not None and job.has_adapter:
        initial["start_from"] = str(job.id)
        initial["base_model"] = job.base_model
        return job
    if base_id and not cloned:  # pairs voted on one base model train that model
        found = base_model_find(base_id, owner=owner)
        if found is not None:
            initial["base_model"] = found
    return None


def _method_kind(method: str) -> str:
    """The kind of data a method trains on: pairs, prompts or examples."""
    return "pairs" if method in PREFERENCE_METHODS else "prompts" if method == "reinforcement" else "examples"


def _summary(dataset: Dataset, method: str, on_top_of: FineTuneJob | None) -> str:
    """ "Trains on your 12 preference pairs from <dataset> with DPO, on top of <job>." in one sentence."""
    how = {"dpo": "DPO", "orpo": "ORPO", "reinforcement": "reinforcement (answers scored by your grader)"}.get(
        method, "supervised fine-tuning"
    )
    noun = ("preference pair" if dataset.holds_pairs else "prompt" if dataset.holds_prompts else "example") + (
        "" if dataset.rows == 1 else "s"
    )
    text = f"Trains on your {dataset.rows} {noun} from {dataset.name} with {how}"
    if on_top_of is not None:
        text += f", on top of {on_top_of.name or on_top_of.short_id}"
    return text + "."


def dataset_kinds(*, owner) -> dict[str, dict]:
    """Each of the owner's datasets' kind and size warning, for the form's script (the method follows the data),
    and for prompts the fields a grader can read ({{item.<field>}}, from the first row: the reward builder)."""
    return {
        str(d.id): {
            "name": d.name,
            "pairs": d.holds_pairs,
            "method": d.data_method,
            "kind": d.kind_label,
            "warning": d.size_warning,
            "fields": _prompt_fields(d),
        }
        for d in dataset_list(owner=owner).only("id", "name", "schema", "rows", "normalized_file")
    }


def _prompt_fields(dataset: Dataset) -> list[str]:
    """The item fields of a prompts dataset's first row ([] for other data or a file that is gone)."""
    if not dataset.holds_prompts or not dataset.normalized_file:
        return []
    try:
        return prompt_fields(blobs.fetch(dataset.normalized_file))
    except OSError:
        return []
