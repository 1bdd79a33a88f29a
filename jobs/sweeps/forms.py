"""The "Find settings" form: what a sweep searches (learning rate, rank, epochs, or any setting as JSON), its
budget and metric. The checks are the service's (jobs.sweeps.services.sweep_create); an error it names with a
field path (`space.rank`) is shown beside the field that holds it."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from jobs.base_models.selectors import base_model_list
from jobs.datasets.selectors import dataset_list

METRICS = (("eval_loss", "Validation loss (lower is better)"), ("exact_match", "Exact answers (higher is better)"))
PRUNERS = (
    ("successive_halving", "Successive halving: stop poor trials early"),
    ("hyperband", "Hyperband: successive halving at several speeds"),
    ("none", "None: every trial runs to its end"),
)
# A service error's field -> the form field that shows it.
ERROR_FIELDS = {
    "space.learning_rate": "lr_low",
    "space.rank": "ranks",
    "space.epochs": "epochs_low",
    "space.n_epochs": "epochs_low",
}


class SweepForm(forms.Form):
    name = forms.CharField(required=False, max_length=200, label="Name")
    dataset = forms.ChoiceField(label="Dataset")
    base_model = forms.ChoiceField(label="Base model")
    metric = forms.ChoiceField(choices=METRICS, initial="eval_loss", label="Rank trials by")
    trials = forms.IntegerField(min_value=1, max_value=200, initial=8, label="Trials", help_text="jobs at most")
    minutes = forms.IntegerField(
        min_value=1, required=False, label="Time budget (minutes)", help_text="no new trial after this; empty: none"
    )
    parallelism = forms.IntegerField(
        min_value=1, max_value=16, initial=2, label="Trials at once", help_text="on as many train workers as fit"
    )
    lr_low = forms.FloatField(initial=1e-4, label="Learning rate from")
    lr_high = forms.FloatField(initial=3e-3, label="Learning rate to", help_text="searched on a log scale")
    ranks = forms.CharField(initial="8, 16, 32", label="Ranks to try", help_text="comma-separated; empty: not searched")
    epochs_low = forms.FloatField(required=False, initial=1, label="Epochs from")
    epochs_high = forms.FloatField(required=False, initial=3, label="Epochs to", help_text="empty: not searched")
    space_json = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Or: the search space as JSON",
        help_text='replaces the rows above, e.g. {"learning_rate": [1e-4, 3e-3, "log"], "dropout": [0, 0.2]}',
    )
    pruner = forms.ChoiceField(choices=PRUNERS, initial="successive_halving", label="Pruning")

    def __init__(self, *args, owner, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner
        self.fields["dataset"].choices = [(str(d.id), d.name) for d in dataset_list(owner=owner)]
        self.fields["base_model"].choices = [(str(m.id), m.name) for m in base_model_list(owner=owner)]

    def space(self) -> Any:
        """The search space the fields describe (the JSON one when given)."""
        data = self.cleaned_data
        if data.get("space_json", "").strip():
            try:
                return json.loads(data["space_json"])
            except ValueError:
                self.add_error("space_json", "not valid JSON")
                return None
        space: dict[str, Any] = {"learning_rate": [data["lr_low"], data["lr_high"], "log"]}
        ranks = [r.strip() for r in (data.get("ranks") or "").split(",") if r.strip()]
        if ranks:
            try:
                values = [int(r) for r in ranks]
            except ValueError:
                self.add_error("ranks", "whole numbers, separated by commas")
                return None
            space["rank"] = values if len(values) != 2 else {"choices": values}
        if data.get("epochs_low") is not None and data.get("epochs_high") is not None:
            space["epochs"] = [data["epochs_low"], data["epochs_high"]]
        return space

    def show_error(self, field: str, message: str) -> None:
        """A service error beside the field that holds it (the JSON space, or the form as a whole)."""
        target = ERROR_FIELDS.get(field) if not self.cleaned_data.get("space_json", "").strip() else "space_json"
        if target is None and field.startswith("space"):
            target = "space_json"
        if target is None and field in self.fields:
            target = field
        self.add_error(target, f"{field}: {message}" if target is None or target == "space_json" else message)
