"""The job form. Its validation defers to worker.config.TrainConfig, the single source of truth."""

from __future__ import annotations

import json
from typing import cast

from django import forms
from django.forms.utils import ErrorList

from jobs.accounts.limits import QuotaExceeded
from jobs.base_models.models import BaseModel
from jobs.base_models.selectors import base_model_list
from jobs.datasets.models import Dataset
from jobs.training.models import JobStatus
from jobs.training.plan import JobPlan, JobRefused, job_plan, validation_problems
from jobs.training.selectors import job_list
from worker.config import PRESETS, TrainConfig, setting_metadata
from worker.errors import InputError
from worker.presets import PRESET_GOALS
from worker.setting_fields import SETTING_GROUPS

SETTINGS = setting_metadata()  # each TrainConfig setting's label, help, limits and choices
CONFIG_FIELDS = tuple(SETTINGS)
# The settings the form asks for; any other left empty keeps its default.
REQUIRED_SETTINGS = frozenset(
    {
        "rank",
        "alpha",
        "dropout",
        "target_preset",
        "epochs",
        "learning_rate",
        "batch_size",
        "grad_accum",
        "max_seq_length",
        "warmup_ratio",
        "lr_scheduler",
        "weight_decay",
        "seed",
        "bias",
    }
)
VALIDATION_CHOICES = [
    ("split", "Hold back part of the dataset"),
    ("dataset", "Another dataset"),
    ("none", "None (no test and no early stopping)"),
]
# The goals a person picks (the presets, in plain words); "" keeps the settings as set under Custom settings.
GOAL_CHOICES = [*((name, title) for name, (title, _line) in PRESET_GOALS.items()), ("", "My own settings")]
CUSTOM_GOAL_LINE = "As set under Custom settings; changing any of them there picks this."
# What a new job needs at first; everything else is under "Custom settings".
MAIN_FIELDS = ("dataset", "base_model", "preset")
# The groups under "Custom settings", declared once: (group of the settings' metadata, fields in order). The
# form's own fields (name, the validation set) sit with the settings they go with.
FIELDSETS = (
    (
        "learn",
        ("name", "method", "beta", "start_from", "grader", "group_size", "sample_temperature", "max_answer_tokens"),
    ),
    (
        "amount",
        (
            "epochs",
            "max_steps",
            "learning_rate",
            "lr_scheduler",
            "warmup_ratio",
            "weight_decay",
            "max_grad_norm",
            "optimizer",
            "seed",
        ),
    ),
    (
        "adapter",
        (
            "rank",
            "alpha",
            "dropout",
            "target_preset",
            "target_modules",
            "use_rslora",
            "use_dora",
            "bias",
            "init_lora_weights",
            "modules_to_save",
        ),
    ),
    (
        "memory",
        (
            "qlora",
            "gradient_checkpointing",
            "batch_size",
            "grad_accum",
            "max_seq_length",
            "precision",
            "packing",
            "liger",
            "devices",
            "sharding",
        ),
    ),
    (
        "checks",
        (
            "validation",
            "validation_percent",
            "validation_seed",
            "validation_dataset",
            "eval_every",
            "early_stopping_patience",
            "early_stopping_threshold",
            "keep_best",
            "final_eval",
            "save_every",
        ),
    ),
)
# The usual (technical) name of the form's own fields that have a plain label, shown as the hint.
FORM_TERMS = {
    "grader": "grader",
    "validation": "Validation set",
    "validation_percent": "Validation %",
    "validation_seed": "Split seed",
    "validation_dataset": "Validation dataset",
    "preset": "preset",
}


def clone_initial(job) -> dict:
    """The form's values for a new job made from `job`: its data, settings and validation (a "copy" name)."""
    config = TrainConfig.from_dict(job.config)
    initial = {name: getattr(config, name) for name in CONFIG_FIELDS}
    for name in ("target_modules", "modules_to_save"):
        initial[name] = ", ".join(initial[name])
    validation = job.validation or {}
    initial.update(
        preset="",
        name=f"{job.name or job.short_id} (copy)"[:200],
        base_model=job.base_model,
        validation=validation.get("kind", "none"),
    )
    if job.dataset is not None:
        initial["dataset"] = job.dataset
    if validation.get("kind") == "split":
        initial.update(validation_percent=validation.get("percent"), validation_seed=validation.get("seed"))
    elif validation.get("kind") == "dataset":
        initial["validation_dataset"] = validation.get("dataset")
    return initial


def setting_field(name: str) -> forms.Field:
    """The form field of TrainConfig setting `name`, made from its metadata: its plain label, help, choices, default
    and limits. The limits are the inputs' min / max only, so a value out of range gets TrainConfig's message."""
    meta = SETTINGS[name]
    default = meta["default"]
    common = {"label": meta["plain"], "help_text": meta["help"], "required": name in REQUIRED_SETTINGS}
    if meta["choices"] is not None:
        return forms.ChoiceField(choices=list(meta["choices"].items()), initial=default, **common)
    if meta["type"] == "bool":
        return forms.BooleanField(initial=default, **{**common, "required": False})
    if meta["type"] in ("int", "float"):
        field = (forms.IntegerField if meta["type"] == "int" else forms.FloatField)(initial=default, **common)
        field.widget.attrs.update({"min": str(meta["min"]), "max": str(meta["max"])})
        return field
    if meta["job_id"]:
        return forms.ChoiceField(**common)  # the owner's succeeded jobs, set per form
    return forms.CharField(**common)  # a comma-separated list of module names


def field_term(name: str) -> str:
    """The usual (technical) name of field `name` when its label is in plain words instead; else ""."""
    if name in SETTINGS:
        meta = SETTINGS[name]
        return meta["label"] if meta["plain"] != meta["label"] else ""
    return FORM_TERMS.get(name, "")


def _with_settings(form_class: type[forms.Form]) -> type[forms.Form]:
    """Adds a field per TrainConfig setting and orders all the fields as MAIN_FIELDS and FIELDSETS lay them out."""
    fields = {**form_class.base_fields, **{name: setting_field(name) for name in CONFIG_FIELDS}}
    order = [*MAIN_FIELDS, *(name for _group, names in FIELDSETS for name in names)]
    if sorted(order) != sorted(fields):
        raise TypeError(f"MAIN_FIELDS and FIELDSETS must list every field of {form_class.__name__} once")
    form_class.base_fields = form_class.declared_fields = {name: fields[name] for name in order}
    return form_class


@_with_settings
class JobForm(forms.Form):
    name = forms.CharField(
        max_length=200, required=False, help_text="Empty: a name is made from the dataset and the settings."
    )
    base_model = forms.ModelChoiceField(
        queryset=BaseModel.objects.none(), empty_label=None, help_text="The model your adapter is trained on top of."
    )
    dataset = forms.ModelChoiceField(
        queryset=Dataset.objects.none(), empty_label=None, help_text="The examples the model learns from."
    )
    preset = forms.ChoiceField(
        choices=GOAL_CHOICES,
        required=False,
        initial="balanced",
        label="Goal",
        widget=forms.RadioSelect,
        help_text="Each goal sets the adapter and how long it trains; Custom settings shows every value.",
    )
    # One field per TrainConfig setting is added from its metadata by `_with_settings` below.
    validation = forms.ChoiceField(choices=VALIDATION_CHOICES, initial="split", label="Test examples")
    validation_percent = forms.FloatField(
        initial=10,
        required=False,
        label="Share held back (%)",
        help_text="The part of the dataset kept out of training to test the model on.",
    )
    validation_seed = forms.IntegerField(
        initial=42,
        required=False,
        label="Hold-back shuffle number",
        help_text="Which examples are held back; the same number holds back the same ones.",
    )
    validation_dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), required=False, label="Test dataset")
    grader = forms.CharField(
        required=False,
        label="How answers are scored",
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "class": "code"}),
        help_text="Reinforcement only: the grader that scores each tried answer from 0 to 1, in OpenAI's JSON shape "
        "(pick a starting point above it and adjust).",
    )

    def __init__(self, *args, owner, refuse: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["base_model"]).queryset = base_model_list(owner=owner)
        cast(forms.ModelChoiceField, self.fields["dataset"]).queryset = Dataset.objects.filter(owner=owner)
        cast(forms.ModelChoiceField, self.fields["validation_dataset"]).queryset = Dataset.objects.filter(owner=owner)
        done = job_list(owner=owner, status=JobStatus.SUCCEEDED).select_related("base_model")
        start_from = cast(forms.ChoiceField, self.fields["start_from"])
        start_from.choices = [("", "Nothing: a new adapter on the base model")] + [
            (str(j.id), f"{j.name or j.short_id} ({j.config.get('method', 'supervised')} on {j.base_model.name})")
            for j in done
        ]
        self.owner = owner
        self.refuse = refuse  # off for the estimate: a job that fits nowhere is shown, not refused
        self.plan: JobPlan | None = None
        self.estimate = None
        self.quota_exceeded = False
        self.presets = PRESETS

    @property
    def main_fields(self) -> list[tuple[forms.BoundField, str]]:
        """The fields shown at first but the goal, each as (bound field, its technical name or "")."""
        return [(self[name], field_term(name)) for name in MAIN_FIELDS if name != "preset"]

    @property
    def goals(self) -> list[dict]:
        """The goal choices: value, title, the one line of what it trades, and whether it is the chosen one."""
        chosen = self["preset"].value() or ""
        lines = {name: line for name, (_title, line) in PRESET_GOALS.items()} | {"": CUSTOM_GOAL_LINE}
        return [
            {"value": value, "title": title, "line": lines[value], "checked": value == chosen, "key": value or "custom"}
            for value, title in GOAL_CHOICES
        ]

    @property
    def custom_fieldsets(self) -> list[tuple[str, list[tuple[forms.BoundField, str]]]]:
        """The groups under "Custom settings", each as (heading, [(bound field, its technical name or "")])."""
        return [
            (SETTING_GROUPS[group], [(self[name], field_term(name)) for name in names]) for group, names in FIELDSETS
        ]

    @property
    def custom_has_errors(self) -> bool:
        """True when a field under "Custom settings" is wrong: the section then comes back open."""
        return any(name in self.errors for _group, names in FIELDSETS for name in names)

    @property
    def error_rows(self) -> list[tuple[str, str, str, ErrorList]]:
        """Each wrong field as (its input's id, label, technical name or "", messages), in the form's order."""
        return [
            (
                "field-preset" if field.name == "preset" else field.id_for_label,
                str(field.label),
                field_term(field.name),
                field.errors,
            )
            for field in self
            if field.errors
        ]

    def clean(self):
        """Every TrainConfig and validation-set rule broken, each beside its field and all at once; then, with
        none, the job's plan (`job_plan`, the rules of every caller): its error beside its field, or the plan
        and its estimate."""
        data = super().clean()
        # A left-empty optional field keeps its default; a field that is already wrong is left to its message.
        values = {k: data[k] for k in CONFIG_FIELDS if k in data and data[k] not in (None, "") and k not in self.errors}
        # A goal sets its settings (the page's script shows them and picks "My own settings" once one is changed).
        goal = PRESETS.get(data.get("preset") or "", {})
        values.update({k: v for k, v in goal.items() if k not in self.errors})
        for exc in TrainConfig.problems(values):
            self._add_config_error(exc)
        # The validation set's problems too, all at once (the plan's own rules); then the plan checks the rest.
        for exc in validation_problems(
            owner=self.owner,
            dataset=data.get("dataset"),
            config=None,
            kind=data.get("validation"),
            percent=data.get("validation_percent"),
            seed=data.get("validation_seed"),
            other=data.get("validation_dataset"),
        ):
            self._add_config_error(exc)
        grader = self._grader(data.get("grader") or "")
        if self.errors or data.get("base_model") is None or data.get("dataset") is None:
            return data
        try:
            self.plan = job_plan(
                owner=self.owner,
                dataset=data["dataset"],
                base_model=data["base_model"],
                config=TrainConfig.from_dict(values),
                validation=data.get("validation"),
                validation_percent=data.get("validation_percent"),
                validation_seed=data.get("validation_seed"),
                validation_dataset=data.get("validation_dataset"),
                refuse=self.refuse,
                grader=grader,
            )
        except JobRefused as exc:
            self.estimate = exc.plan.estimate  # shown with its advice beside the refusal
            self.add_error(None, exc.message[0].upper() + exc.message[1:])
        except InputError as exc:
            self._add_config_error(exc)
        except QuotaExceeded as exc:
            self.quota_exceeded = True
            self.add_error(None, exc.message)
        else:
            self.estimate = self.plan.estimate
        return data

    def _grader(self, text: str) -> object:
        """The grader box's JSON (None when empty); a syntax error goes beside it with its line and column."""
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            self.add_error("grader", f"Is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
            return None

    def _add_config_error(self, exc: InputError) -> None:
        """The message beside its field, or at the top naming the field in words when the form has none."""
        if exc.field.startswith("grader.") and "grader" not in self.errors:  # a part of it: the path says where
            self.add_error("grader", f"{exc.field}: {exc.message}")
            return
        if exc.field in self.fields:
            if exc.field not in self.errors:
                self.add_error(exc.field, exc.message[0].upper() + exc.message[1:])
        else:
            self.add_error(None, f"{exc.field.replace('_', ' ').capitalize()} {exc.message}")


def setting_rows(config: dict) -> list[tuple[str, str, object]]:
    """A job's settings for people: (field name, the setting's usual name, value shown), in the form's order, then
    any setting the form does not show."""
    order = [name for _group, names in FIELDSETS for name in names if name in config]
    order += [name for name in config if name not in order]
    rows = []
    for name in order:
        label = SETTINGS[name]["label"] if name in SETTINGS else name.replace("_", " ").capitalize()
        value = config[name]
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(value) or "–"
        elif value == "":
            value = "–"
        rows.append((name, label, value))
    return rows
