"""OpenAI's Evals API (`client.evals` and `client.evals.runs`) over jobs.benchmarks.evals: evals with custom items
and graders as testing criteria, runs answered by a model of the owner's (or given answers) and graded on the
background worker, and each item's output. The logs, stored completions and responses data sources are refused
in words (this server keeps no logs)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from rest_framework.response import Response

from jobs.benchmarks import evals, selectors
from jobs.benchmarks.models import Eval, EvalRun
from jobs.common.errors import OpenAIError
from jobs.common.ids import parse_public_id
from jobs.openai_compat.base import OpenAIView, known_fields, openai_schema, page, page_params, unix_time

EVAL_FIELDS = {
    "name": "a string",
    "data_source_config": "an object",
    "testing_criteria": "an array",
    "metadata": "an object",
}
UPDATE_FIELDS = {"name": "a string", "metadata": "an object"}
RUN_FIELDS = {"name": "a string", "data_source": "an object", "metadata": "an object"}


def _required(body: dict, name: str) -> None:
    if body.get(name) is None:
        raise OpenAIError(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")


def eval_public_id(evaluation: Eval) -> str:
    return f"eval_{evaluation.id.hex}"


def run_public_id(run: EvalRun) -> str:
    return f"evalrun_{run.id.hex}"


def owned_eval(owner, value: str) -> Eval:
    """The owner's eval named by `eval_<hex>`, or a 404 in OpenAI's words (another user's is as missing)."""
    found = selectors.eval_find(owner=owner, eval_id=parse_public_id(value, "eval_"))
    if found is None:
        raise OpenAIError(f"No eval found with id '{value}'.", param="eval_id", code="not_found", status=404)
    return found


def owned_run(owner, eval_id: str, run_id: str) -> EvalRun:
    evaluation = owned_eval(owner, eval_id)
    run = selectors.eval_run_find(owner=owner, evaluation=evaluation, run_id=parse_public_id(run_id, "evalrun_"))
    if run is None:
        raise OpenAIError(f"No run found with id '{run_id}'.", param="run_id", code="not_found", status=404)
    return run


def eval_object(evaluation: Eval) -> dict[str, Any]:
    properties: dict[str, Any] = {"item": evaluation.item_schema}
    if evaluation.include_sample_schema:
        properties["sample"] = {
            "type": "object",
            "properties": {"output_text": {"type": "string"}},
            "required": ["output_text"],
        }
    return {
        "id": eval_public_id(evaluation),
        "object": "eval",
        "created_at": unix_time(evaluation.created),
        "name": evaluation.name,
        "metadata": evaluation.metadata or None,
        "data_source_config": {
            "type": "custom",
            "schema": {"type": "object", "properties": properties, "required": sorted(properties)},
        },
        "testing_criteria": evaluation.testing_criteria,
    }


def _item_status(output: dict[str, Any]) -> str:
    if output.get("error") or any(r.get("problems") for r in output.get("results", [])):
        return "error"
    return "pass" if all(r["passed"] for r in output["results"]) else "fail"


def run_object(run: EvalRun, request) -> dict[str, Any]:
    statuses = [_item_status(o) for o in run.outputs]
    criteria = []
    for criterion in run.eval.testing_criteria:
        results = [r for o in run.outputs for r in o.get("results", []) if r["name"] == criterion["name"]]
        passed = sum(1 for r in results if r["passed"])
        criteria.append({"testing_criteria": criterion["name"], "passed": passed, "failed": len(results) - passed})
    usage = run.usage or {}
    per_model = []
    if run.model:
        tokens = int(usage.get("completion_tokens", 0))
        per_model.append(
            {
                "model_name": run.model,
                "invocation_count": int(usage.get("invocation_count", 0)),
                "prompt_tokens": 0,
                "completion_tokens": tokens,
                "total_tokens": tokens,
                "cached_tokens": 0,
            }
        )
    source = dict(run.data_source.get("source") or {})
    if source.get("type") == "file_content":
        source["content"] = run.items
    data_source = {**run.data_source, "source": source}
    error = None
    if run.error:
        error = {"code": "run_failed", "message": run.error}
    eval_id, run_id = eval_public_id(run.eval), run_public_id(run)
    return {
        "id": run_id,
        "object": "eval.run",
        "created_at": unix_time(run.created),
        "eval_id": eval_id,
        "name": run.name,
        "model": run.model or None,
        "status": run.status,
        "data_source": data_source,
        "metadata": run.metadata or None,
        "error": error,
        "result_counts": {
            "total": len(run.items),
            "passed": statuses.count("pass"),
            "failed": statuses.count("fail"),
            "errored": statuses.count("error"),
        },
        "per_model_usage": per_model,
        "per_testing_criteria_results": criteria,
        "report_url": request.build_absolute_uri(reverse("openai-eval-run", args=[eval_id, run_id])),
    }


def output_item_object(run: EvalRun, index: int) -> dict[str, Any]:
    output = run.outputs[index]
    sampling = run.data_source.get("sampling_params") or {}
    sample_error = {"code": "sample_failed", "message": output["error"]} if output.get("error") else None
    text = output.get("text")
    return {
        "id": f"outputitem_{run.id.hex}-{index}",
        "object": "eval.run.output_item",
        "created_at": unix_time(run.created),
        "eval_id": eval_public_id(run.eval),
        "run_id": run_public_id(run),
        "datasource_item_id": index,
        "datasource_item": run.items[index]["item"],
        "status": _item_status(output),
        "results": output.get("results", []),
        "sample": {
            "input": output.get("input", []),
            "output": [] if text is None else [{"role": "assistant", "content": text}],
            "model": run.model or None,
            "finish_reason": None if text is None else "stop",
            "error": sample_error,
            "max_completion_tokens": sampling.get("max_completion_tokens"),
            "temperature": sampling.get("temperature"),
            "top_p": sampling.get("top_p"),
            "seed": sampling.get("seed"),
            "usage": {
                "prompt_tokens": 0,
                "completion_tokens": output.get("tokens", 0),
                "total_tokens": output.get("tokens", 0),
                "cached_tokens": 0,
            },
        },
    }


def _list_page(request, items: list[dict]) -> dict:
    """OpenAI's cursor page of `items` (given oldest first): order=asc (the default) or desc, after, limit."""
    order = request.query_params.get("order") or "asc"
    if order not in ("asc", "desc"):
        raise OpenAIError("order must be asc or desc", param="order")
    after, limit = page_params(request)
    answer = page(items if order == "asc" else items[::-1], after, limit)
    data = answer["data"]
    return {**answer, "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


class EvalListApi(OpenAIView):
    """GET /v1/evals (oldest first; order=desc for newest first), POST /v1/evals."""

    @openai_schema("listEvals")
    def get(self, request):
        found = selectors.eval_list(owner=request.user).order_by("created")
        return Response(_list_page(request, [eval_object(e) for e in found]))

    @openai_schema("createEval", errors=(400,))
    def post(self, request):
        body = known_fields(request.data, EVAL_FIELDS)
        _required(body, "data_source_config")
        _required(body, "testing_criteria")
        created = evals.eval_create(
            owner=request.user,
            name=body.get("name"),
            data_source_config=body["data_source_config"],
            testing_criteria=body["testing_criteria"],
            metadata=body.get("metadata"),
        )
        return Response(eval_object(created))


class EvalDetailApi(OpenAIView):
    """GET, POST (name, metadata) and DELETE /v1/evals/{eval_id}."""

    @openai_schema("getEval", errors=(404,))
    def get(self, request, eval_id):
        return Response(eval_object(owned_eval(request.user, eval_id)))

    @openai_schema("updateEval", errors=(400, 404))
    def post(self, request, eval_id):
        body = known_fields(request.data, UPDATE_FIELDS)
        evaluation = owned_eval(request.user, eval_id)
        return Response(eval_object(evals.eval_update(evaluation=evaluation, **body)))

    @openai_schema("deleteEval", errors=(404,))
    def delete(self, request, eval_id):
        evals.eval_delete(evaluation=owned_eval(request.user, eval_id))
        return Response({"object": "eval.deleted", "deleted": True, "eval_id": eval_id})


class EvalRunListApi(OpenAIView):
    """GET /v1/evals/{eval_id}/runs (status= to filter), POST to start a run."""

    @openai_schema("getEvalRuns", errors=(404,))
    def get(self, request, eval_id):
        runs = selectors.eval_run_list(owner=request.user, evaluation=owned_eval(request.user, eval_id))
        wanted = request.query_params.get("status")
        if wanted:
            runs = runs.filter(status=wanted)
        found = runs.select_related("eval").order_by("created")
        return Response(_list_page(request, [run_object(r, request) for r in found]))

    @openai_schema("createEvalRun", errors=(400, 404))
    def post(self, request, eval_id):
        body = known_fields(request.data, RUN_FIELDS)
        evaluation = owned_eval(request.user, eval_id)
        _required(body, "data_source")
        run = evals.eval_run_create(
            owner=request.user,
            evaluation=evaluation,
            data_source=body["data_source"],
            name=body.get("name"),
            metadata=body.get("metadata"),
        )
        return Response(run_object(run, request))


class EvalRunDetailApi(OpenAIView):
    """GET, POST (cancel, as OpenAI's reference documents it) and DELETE /v1/evals/{eval_id}/runs/{run_id}."""

    @openai_schema("getEvalRun", errors=(404,))
    def get(self, request, eval_id, run_id):
        return Response(run_object(owned_run(request.user, eval_id, run_id), request))

    @openai_schema("cancelEvalRun", errors=(404, 409))
    def post(self, request, eval_id, run_id):
        run = evals.eval_run_cancel(run=owned_run(request.user, eval_id, run_id))
        return Response(run_object(run, request))

    @openai_schema("deleteEvalRun", errors=(404,))
    def delete(self, request, eval_id, run_id):
        evals.eval_run_delete(run=owned_run(request.user, eval_id, run_id))
        return Response({"object": "eval.run.deleted", "deleted": True, "run_id": run_id})


class EvalRunCancelApi(OpenAIView):
    """POST /v1/evals/{eval_id}/runs/{run_id}/cancel, where the official client sends a cancel."""

    @openai_schema("cancelEvalRunAlias", errors=(404, 409))
    def post(self, request, eval_id, run_id):
        run = evals.eval_run_cancel(run=owned_run(request.user, eval_id, run_id))
        return Response(run_object(run, request))


class EvalOutputItemListApi(OpenAIView):
    """GET /v1/evals/{eval_id}/runs/{run_id}/output_items (status=pass|fail to filter)."""

    @openai_schema("getEvalRunOutputItems", errors=(404,))
    def get(self, request, eval_id, run_id):
        run = owned_run(request.user, eval_id, run_id)
        items = [output_item_object(run, i) for i in range(len(run.outputs))]
        wanted = request.query_params.get("status")
        if wanted:
            items = [item for item in items if item["status"] == wanted]
        return Response(_list_page(request, items))


class EvalOutputItemDetailApi(OpenAIView):
    """GET /v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}."""

    @openai_schema("getEvalRunOutputItem", errors=(404,))
    def get(self, request, eval_id, run_id, output_item_id):
        run = owned_run(request.user, eval_id, run_id)
        prefix = f"outputitem_{run.id.hex}-"
        index = output_item_id.removeprefix(prefix)
        if not output_item_id.startswith(prefix) or not index.isdigit() or int(index) >= len(run.outputs):
            raise OpenAIError(
                f"No output item found with id '{output_item_id}'.",
                param="output_item_id",
                code="not_found",
                status=404,
            )
        return Response(output_item_object(run, int(index)))
