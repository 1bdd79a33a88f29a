"""Writes for the base-model catalogue."""
from __future__ import annotations

from pathlib import Path

from base_models.models import BaseModel
from common.blobs import model_local_path
from worker.modeling import describe_model


def base_model_register(*, name: str, path: str | Path) -> BaseModel:
    """Describe a model folder (on the meta device) and record it; idempotent by name. `path` is a local
    folder or a store prefix s3://BUCKET/PREFIX (downloaded into this machine's model cache to describe)."""
    info = describe_model(model_local_path(str(path)))
    model, _ = BaseModel.objects.update_or_create(
        name=name,
        defaults=dict(path=str(path), architecture=info["architecture"], parameters=info["parameters"],
                      linear_modules=info["linear_modules"], has_chat_template=info["has_chat_template"]),
    )
    return model
