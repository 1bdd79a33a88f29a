"""Dataset forms: upload, the column mapping of an unknown schema, rename."""

from __future__ import annotations

import json
from typing import cast

from django import forms

from worker.data.column_hints import guess_mapping
from worker.data.mapping import ColumnMapping
from worker.errors import InputError


class UploadForm(forms.Form):
    file = forms.FileField(
        help_text="JSONL, JSON, CSV or Parquet: chat messages, ShareGPT, prompt/completion, "
        "Alpaca, plain text or preference pairs (prompt, chosen, rejected)"
    )
    name = forms.CharField(max_length=200, required=False)
    drop_duplicates = forms.BooleanField(required=False, label="Drop duplicated examples")


class MappingForm(forms.Form):
    """Map the columns of a file that matches no known schema to roles."""

    ROLES = ("prompt", "response", "system", "text", "chosen", "rejected")

    token = forms.CharField(widget=forms.HiddenInput)
    filename = forms.CharField(widget=forms.HiddenInput)
    name = forms.CharField(max_length=200, required=False)
    drop_duplicates = forms.BooleanField(required=False, label="Drop duplicated examples")
    prompt = forms.ChoiceField(required=False, label="User / prompt column")
    response = forms.ChoiceField(required=False, label="Assistant / response column")
    system = forms.ChoiceField(required=False, label="System column (optional)")
    text = forms.ChoiceField(required=False, label="Or: a plain text column (continued pre-training)")
    chosen = forms.ChoiceField(
        required=False,
        label="Or for preference pairs: the chosen answer column (with a prompt column, instead of a response)",
    )
    rejected = forms.ChoiceField(required=False, label="and the rejected answer column")

    NOTHING_MAPPED = "pick the column that holds the prompts (and the one with the answers), or a plain text column"

    def __init__(self, *args, columns: list[str], samples: dict[str, list[str]] | None = None, **kwargs):
        kwargs.setdefault("auto_id", "map_%s")  # it shares the page with the upload form: ids stay unique
        super().__init__(*args, **kwargs)
        choices = [("", "—")] + [(c, c) for c in columns]
        for name in self.ROLES:
            cast(forms.ChoiceField, self.fields[name]).choices = choices
        self.columns = list(columns)
        self.samples = {c: (samples or {}).get(c, []) for c in self.columns}
        if not self.is_bound:  # pre-filled from the headers; the user can change every guess
            for role, column in guess_mapping(self.columns).items():
                self.initial.setdefault(role, column)

    def clean(self):
        cleaned = super().clean()
        mapping = self.mapping()
        if not mapping:  # nothing picked: say so beside the first select, before the file is read again
            self.add_error("prompt", self.NOTHING_MAPPED)
            return cleaned
        try:
            ColumnMapping.from_dict(mapping)
        except InputError as exc:
            self.add_error(exc.field if exc.field in self.fields else None, exc.message)
        return cleaned

    def mapping(self) -> dict:
        return {k: self.cleaned_data[k] for k in self.ROLES if self.cleaned_data.get(k)}

    @property
    def samples_json(self) -> str:
        return json.dumps(self.samples)

    def role_samples(self) -> list[tuple]:
        """(bound field, its column's sample values) per role, for the template."""
        return [(self[role], self.samples.get(self[role].value() or "", [])) for role in self.ROLES]

    # How many distinct columns each role needs with it, at least: a role the file's columns cannot fill
    # (a system column beside prompt and response in a 2-column file) is not shown at all.
    ROLE_COLUMNS = {"prompt": 2, "response": 2, "system": 3, "text": 1, "chosen": 3, "rejected": 3}

    def main_roles(self) -> tuple[str, ...]:
        """The selects shown at once: prompt and response (text alone for a file of one column)."""
        return ("prompt", "response") if len(self.columns) >= 2 else ("text",)

    def role_groups(self) -> tuple[list[tuple], list[tuple], bool]:
        """(shown at once, behind "more", whether "more" opens): each a list of role_samples() items, only the
        roles the file has enough columns for; "more" opens when one of its roles is picked or refused."""
        main_roles = self.main_roles()
        main: list[tuple] = []
        more: list[tuple] = []
        for field, samples in self.role_samples():
            if len(self.columns) < self.ROLE_COLUMNS[field.name]:
                continue
            (main if field.name in main_roles else more).append((field, samples))
        opened = any(field.value() or field.errors for field, _ in more)
        return main, more, opened


class RenameForm(forms.Form):
    name = forms.CharField(max_length=200)
