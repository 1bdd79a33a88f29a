"""OpenAI's models API: the base models and the owner's fine-tuned ones (`ft:` ids)."""

from __future__ import annotations

from typing import Any

from django.db.models import F
from rest_framework.response import Response

from jobs.base_models.selectors import base_model_list
from jobs.common.errors import OpenAIError
from jobs.openai_compat.base import OpenAIView, openai_schema, unix_time
from jobs.openai_compat.fine_tuning import fine_tuned_model
from jobs.training.models import JobStatus
from jobs.training.selectors import job_list

OWNED_BY = "lora-studio"


def _model_objects(owner) -> list[dict[str, Any]]:
    # A shared model named like one of the owner's (added by staff later) is hidden: the name means theirs.
    bases = {b.name: b for b in base_model_list(owner=owner).order_by(F("owner").asc(nulls_first=True))}
    data = [
        {"id": b.name, "object": "model", "created": unix_time(b.created), "owned_by": OWNED_BY}
        for b in sorted(bases.values(), key=lambda b: b.name)
    ]
    for job in job_list(owner=owner, status=JobStatus.SUCCEEDED).select_related("owner"):
        data.append(
            {
                "id": fine_tuned_model(job),
                "object": "model",
                "created": unix_time(job.finished or job.created),
                "owned_by": f"user-{owner.id}",
                "root": job.base_model.name,
                "parent": job.base_model.name,
            }
        )
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
