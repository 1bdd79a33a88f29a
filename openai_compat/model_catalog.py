"""OpenAI's models API: the base models and the owner's fine-tuned ones (`ft:` ids)."""
from __future__ import annotations

import re
from typing import Any

from rest_framework.response import Response

from base_models.models import BaseModel
from base_models.selectors import base_model_list
from common.errors import OpenAIError
from openai_compat.base import OpenAIView, openai_schema, unix_time
from openai_compat.fine_tuning import fine_tuned_model
from training.models import FineTuneJob, JobStatus
from training.selectors import job_list

OWNED_BY = "lora-studio"


def _model_objects(owner) -> list[dict[str, Any]]:
    data = [{"id": b.name, "object": "model", "created": unix_time(b.created), "owned_by": OWNED_BY}
            for b in base_model_list(owner=owner)]
    for job in job_list(owner=owner, status=JobStatus.SUCCEEDED).select_related("owner"):
        data.append({"id": fine_tuned_model(job), "object": "model", "created": unix_time(job.finished or job.created),
                     "owned_by": f"user-{owner.id}", "root": job.base_model.name, "parent": job.base_model.name})
    return data


class ModelListApi(OpenAIView):
    @openai_schema("listModels")
    def get(self, request):
        return Response({"object": "list", "data": _model_objects(request.user)})


class ModelDetailApi(OpenAIView):
    @openai_schema("retrieveModel", errors=(404,))
    def get(self, request, model):
        for item in _model_objects(request.user):
            if item["id"] == model:
                return Response(item)
        raise OpenAIError(f"The model '{model}' does not exist", param="model", code="model_not_found", status=404)


def resolve_model(owner, name: str) -> tuple[BaseModel, FineTuneJob | None]:
    """A base model name or one of the owner's `ft:` ids -> (base model, job or None)."""
    if not isinstance(name, str) or not name:
        raise OpenAIError("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if name.startswith("ft:"):
        short = name.rsplit(":", 1)[-1]
        if re.fullmatch(r"[0-9a-f]{8}", short):
            for job in job_list(owner=owner, status=JobStatus.SUCCEEDED).filter(
                    id__startswith=short).select_related("owner", "adapter"):
                if fine_tuned_model(job) == name and hasattr(job, "adapter"):
                    return job.base_model, job
    else:
        base = base_model_list(owner=owner).filter(name=name).first()
        if base is not None:
            return base, None
    raise OpenAIError(f"The model '{name}' does not exist or you do not have access to it.", param="model",
                   code="model_not_found", status=404)
