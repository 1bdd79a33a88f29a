"""OpenAI's grader endpoints (`client.fine_tuning.alpha.graders.validate / run`) over the graders services."""

from __future__ import annotations

from rest_framework.response import Response

from jobs.arena.graders import grader_run
from jobs.common.errors import OpenAIError
from jobs.openai_compat.base import OpenAIView, known_fields, openai_schema
from jobs.training.graders import grader_check
from worker.errors import InputError
from worker.graders.spec import grader_json

VALIDATE_FIELDS = {"grader": "an object"}
RUN_FIELDS = {"grader": "an object", "model_sample": "a string", "item": "an object"}


def _refusal(exc: InputError) -> OpenAIError:
    return OpenAIError(f"{exc.field}: {exc.message}", param=exc.field, code="invalid_grader")


def _required(body: dict, name: str) -> None:
    if name not in body:
        raise OpenAIError(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")


class GraderValidateApi(OpenAIView):
    """POST /v1/fine_tuning/alpha/graders/validate: {"grader": ...} -> {"grader": ...} or a 400 naming the path."""

    @openai_schema("validateGrader", errors=(400, 401, 429))
    def post(self, request):
        body = known_fields(request.data, VALIDATE_FIELDS)
        _required(body, "grader")
        try:
            grader = grader_check(owner=request.user, grader=body["grader"])
        except InputError as exc:
            raise _refusal(exc) from None
        return Response({"grader": grader_json(grader)})


class GraderRunApi(OpenAIView):
    """POST /v1/fine_tuning/alpha/graders/run: {"grader", "model_sample", "item"} -> GraderRunResponse."""

    @openai_schema("runGrader", errors=(400, 401, 429))
    def post(self, request):
        body = known_fields(request.data, RUN_FIELDS)
        _required(body, "grader")
        _required(body, "model_sample")
        try:
            answer = grader_run(
                owner=request.user, grader=body["grader"], model_sample=body["model_sample"], item=body.get("item")
            )
        except InputError as exc:
            raise _refusal(exc) from None
        return Response(answer)
