"""Writes for the base-model catalogue."""
from __future__ import annotations

from pathlib import Path

from base_models.models import BaseModel
from worker.modeling import describe_model


def base_model_register(*, name: str, path: str | Path) -> BaseModel:
    """Describe a local model folder (on the meta device) and record it; idempotent by name."""
    info = describe_model(str(path))
    model, _ = BaseModel.objects.update_or_create(
        name=name,
        defaults=dict(path=str(path), architecture=info["architecture"], parameters=info["parameters"],
                      linear_modules=info["linear_modules"], has_chat_template=info["has_chat_template"]),
    )
    return model
