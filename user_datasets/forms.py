"""Dataset forms: upload, the column mapping of an unknown schema, rename."""
from __future__ import annotations

from django import forms


class UploadForm(forms.Form):
    file = forms.FileField(help_text="JSONL, JSON, CSV or Parquet: chat messages, ShareGPT, prompt/completion, "
                                     "Alpaca, plain text or preference pairs (prompt, chosen, rejected)")
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
    chosen = forms.ChoiceField(required=False, label="Or for preference pairs: the chosen answer column "
                                                     "(with a prompt column, instead of a response)")
    rejected = forms.ChoiceField(required=False, label="and the rejected answer column")

    def __init__(self, *args, columns: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        choices = [("", "—")] + [(c, c) for c in columns]
        for name in self.ROLES:
            self.fields[name].choices = choices

    def mapping(self) -> dict:
        return {k: self.cleaned_data[k] for k in self.ROLES if self.cleaned_data.get(k)}


class RenameForm(forms.Form):
    name = forms.CharField(max_length=200)
