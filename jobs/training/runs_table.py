"""Compare runs in plain words: the table of what each run trained on (its dataset, base model, method and the
adapter it started from first, then every setting in the job form's order and under the form's plain labels),
each value as a person reads it (Yes/No, "none", 0.0002, the choice's label, never a Python literal), "—" where a
setting has no effect on that run, and whether the runs differ on the row; and one loss chart per kind of loss,
since a preference loss and a supervised loss do not share a scale."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from django.urls import reverse

from jobs.common.human_units import number_words
from jobs.training.forms import FIELDSETS, SETTINGS, JobForm, field_term
from jobs.training.models import FineTuneJob
from jobs.training.summary import setting_matters

NOT_APPLICABLE = "—"
# Shown above the other settings, after the dataset and the base model: what a run is, before how it trained.
LEADING_SETTINGS = ("method", "start_from")
# What an empty value or 0 means where that is not "none".
EMPTY_WORDS = {"start_from": "a new adapter", "max_steps": "no limit", "eval_every": "about 10 times a run"}
# Each method's loss, in words: (the chart's title, its axis). Unknown methods get their own chart too.
LOSS_KINDS = {
    "supervised": ("Examples with answers: error on the answers (lower is better)", "supervised loss"),
    "dpo": ("Preference pairs with DPO (lower is better; 0.69 is no preference yet)", "DPO loss"),
    "orpo": ("Preference pairs with ORPO: error on the chosen answer plus the preference term", "ORPO loss"),
}


@dataclass(frozen=True)
class Cell:
    """One run's value on a row: its text, a link where it names something, a small note (the dataset's size)."""

    text: str
    href: str = ""
    note: str = ""
    same_as: str = ""  # what makes two runs' values the same, where the text alone does not (an id)

    @property
    def applies(self) -> bool:
        return self.text != NOT_APPLICABLE


@dataclass(frozen=True)
class Row:
    """A row of the table: `name` the setting's key, `label` its plain name, `hint` its usual (technical) name."""

    name: str
    label: str
    hint: str
    cells: list[Cell]
    runs: tuple[str, ...] = ()  # each cell's run, to label it (a card per run on a phone)

    @property
    def labelled_cells(self) -> list[tuple[str, Cell]]:
        return list(zip(self.runs, self.cells, strict=False))

    @property
    def differs(self) -> bool:
        return len({cell.same_as or cell.text for cell in self.cells}) > 1


def setting_words(name: str, value: Any) -> str:
    """A setting's value as the job form says it: Yes/No, the choice's label, "none" for an empty list, numbers
    written one way (number_words)."""
    meta = SETTINGS.get(name)
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "none"
    if value is None or value == "" or (name in EMPTY_WORDS and not value):
        return EMPTY_WORDS.get(name, "none")
    if meta is not None and meta["choices"] is not None:
        return meta["choices"].get(value, str(value))
    if isinstance(value, (int, float)):
        return number_words(value)
    return str(value)


def _config(job: FineTuneJob) -> dict[str, Any]:
    """The job's settings, with the default of any setting that did not exist when it was made."""
    return {**{name: meta["default"] for name, meta in SETTINGS.items()}, **job.config}


def _dataset_cell(job: FineTuneJob) -> Cell:
    dataset = job.dataset
    if dataset is None:
        return Cell(job.dataset_name or "none", note="deleted", same_as=f"deleted:{job.dataset_name}")
    noun = "preference pair" if dataset.holds_pairs else "example"
    return Cell(
        dataset.name,
        href=reverse("dataset-detail", args=[dataset.id]),
        note=f"{dataset.rows} {noun}{'' if dataset.rows == 1 else 's'}",
        same_as=str(dataset.id),
    )


def _start_from_cell(value: str, started_from: dict[str, FineTuneJob]) -> Cell:
    if not value:
        return Cell(EMPTY_WORDS["start_from"])
    parent = started_from.get(value)
    if parent is None:
        return Cell(value[:8], note="deleted", same_as=value)
    return Cell(parent.name or parent.short_id, href=reverse("job-detail", args=[parent.id]), same_as=value)


def validation_words(validation: dict[str, Any]) -> str:
    """Which examples a run was tested on: "10 % held back (shuffle 42)", the test dataset's name, or "none"."""
    kind = validation.get("kind", "none")
    if kind == "split":
        return f"{number_words(validation.get('percent') or 0)} % held back (shuffle {validation.get('seed')})"
    if kind == "dataset":
        return validation.get("dataset_name") or "another dataset"
    return "none"


def _setting_row(name: str, configs: list[dict[str, Any]], devices: list[str | None]) -> Row:
    meta = SETTINGS.get(name)
    label = meta["plain"] if meta is not None else name.replace("_", " ").capitalize()
    cells = [
        Cell(setting_words(name, config.get(name)) if setting_matters(name, config, device) else NOT_APPLICABLE)
        for config, device in zip(configs, devices)
    ]
    return Row(name, label, field_term(name) if meta is not None else "", cells)


def runs_table(
    jobs: list[FineTuneJob], *, devices: list[str | None], started_from: dict[str, FineTuneJob]
) -> list[Row]:
    """The compared runs' rows: dataset, base model, method, where each started, then every setting in the job
    form's order (the test examples where the form asks for them), then any setting the form does not show.
    `devices`: what each run trained on (None before it is known); `started_from`: the owner's jobs that runs
    started from, by id."""
    configs = [_config(job) for job in jobs]
    rows = [
        Row("dataset", "Dataset", "", [_dataset_cell(job) for job in jobs]),
        Row(
            "base_model", "Base model", "", [Cell(job.base_model.name, same_as=str(job.base_model_id)) for job in jobs]
        ),
        _setting_row("method", configs, devices),
        Row(
            "start_from",
            SETTINGS["start_from"]["plain"],
            field_term("start_from"),
            [_start_from_cell(config["start_from"], started_from) for config in configs],
        ),
    ]
    form_order = [name for _group, names in FIELDSETS for name in names]
    unknown = sorted({name for config in configs for name in config} - set(SETTINGS))
    for name in [*form_order, *(n for n in SETTINGS if n not in form_order), *unknown]:
        if name == "validation":
            label = str(JobForm.base_fields["validation"].label)
            cells = [Cell(validation_words(job.validation or {})) for job in jobs]
            rows.append(Row(name, label, field_term(name), cells))
        elif name not in LEADING_SETTINGS and (name in SETTINGS or name in unknown):
            rows.append(_setting_row(name, configs, devices))
    names = tuple(job.name or job.short_id for job in jobs)
    return [dataclasses.replace(row, runs=names) for row in rows]


def loss_charts(methods: list[str]) -> list[dict[str, str]]:
    """One chart per kind of loss among the runs' methods, in the order the methods are known: its kind (the
    method), title and axis label in words."""
    kinds = [*(m for m in LOSS_KINDS if m in methods), *sorted(set(methods) - set(LOSS_KINDS))]
    charts = []
    for kind in kinds:
        title, axis = LOSS_KINDS.get(kind, (f"Runs with {kind}", f"{kind} loss"))
        charts.append({"kind": kind, "title": title, "axis": axis})
    return charts
