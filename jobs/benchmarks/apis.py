"""REST API of benchmark runs: `POST/GET /api/v1/jobs/<id>/benchmarks/` runs suites on a job's base and adapted
model and lists its runs; `POST/GET /api/v1/benchmarks/` does the same for a base model alone; one run is read at
`/api/v1/benchmarks/<id>/` and cancelled at `.../cancel/`; `/api/v1/benchmarks/suites/` lists the built-in suites;
`/api/v1/datasets/<id>/leaderboard/` ranks the runs trained on a dataset (jobs.benchmarks.leaderboard).
Thin DRF views over jobs.benchmarks.services; every read is owner-filtered (another user's job or run is a 404)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.base_models.selectors import base_model_find
from jobs.benchmarks import selectors, services
from jobs.benchmarks.leaderboard import dataset_leaderboard
from jobs.benchmarks.models import BenchmarkRun
from jobs.common.rest import StrictInput
from jobs.common.schema import error_responses
from jobs.datasets.selectors import dataset_get
from jobs.training.selectors import job_get
from worker.benchmarks import MAX_LIMIT, SCORINGS
from worker.errors import InputError


class BenchmarkOutput(serializers.Serializer):
    id = serializers.UUIDField()
    job = serializers.UUIDField(source="job_id", allow_null=True)
    base_model = serializers.CharField(source="base_model.name")
    suites = serializers.ListField(child=serializers.CharField())
    dataset = serializers.CharField(source="dataset_name", help_text="the user task's dataset; empty: none")
    scoring = serializers.CharField()
    limit = serializers.IntegerField(help_text="examples per task at most")
    status = serializers.ChoiceField(choices=BenchmarkRun.Status.values)
    stage = serializers.CharField(help_text="what a running benchmark is doing, in words")
    progress = serializers.FloatField(help_text="0 to 1")
    error = serializers.CharField(help_text="why a failed run failed, in plain words")
    results = serializers.JSONField(
        help_text="per task: task, suite, metric, general, examples, unavailable (why it could not run), and "
        "base / adapted: value, stderr, low, high (a 95% interval)"
    )
    warnings = serializers.SerializerMethodField(help_text="general tasks the adapter lost more than the margin on")
    margin_points = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField(source="created")
    finished_at = serializers.DateTimeField(source="finished", allow_null=True)

    def get_warnings(self, run) -> list[str]:
        return selectors.benchmark_warnings(run)

    def get_margin_points(self, run) -> float:
        return float(settings.BENCHMARK_FORGET_MARGIN)


class BenchmarkInput(StrictInput):
    suites = serializers.ListField(
        child=serializers.CharField(), required=False, default=list, help_text="built-in suite names"
    )
    dataset = serializers.CharField(
        required=False, allow_blank=True, help_text="one of your datasets' ids, or \"held-out\" (the job's split)"
    )
    scoring = serializers.ChoiceField(choices=SCORINGS, required=False, default="exact_match")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT, help_text="examples per task")


def _queued(request, values: dict, *, base_model, job=None) -> Response:
    run = services.benchmark_request(
        owner=request.user,
        base_model=base_model,
        job=job,
        suites=values["suites"],
        dataset=values.get("dataset") or None,
        scoring=values["scoring"],
        limit=values.get("limit"),
    )
    return Response(BenchmarkOutput(run).data, status=status.HTTP_202_ACCEPTED)


class JobBenchmarkListApi(APIView):
    """GET: the job's benchmark runs, newest first. POST: run suites on its base and adapted model (202)."""

    @extend_schema(responses={200: BenchmarkOutput(many=True), **error_responses(404)})
    def get(self, request, job_id):
        job = job_get(owner=request.user, job_id=job_id)
        return Response(BenchmarkOutput(selectors.benchmark_list(owner=request.user, job_id=job.id), many=True).data)

    @extend_schema(request=BenchmarkInput, responses={202: BenchmarkOutput, **error_responses(400, 404, 409)})
    def post(self, request, job_id):
        job = job_get(owner=request.user, job_id=job_id)
        data = BenchmarkInput(data=request.data)
        data.is_valid(raise_exception=True)
        return _queued(request, data.validated_data, base_model=job.base_model, job=job)


@extend_schema_serializer(component_name="BaseModelBenchmarkRequest")
class BaseModelBenchmarkInput(BenchmarkInput):
    base_model = serializers.UUIDField(help_text="the base model's id")


class BenchmarkListApi(APIView):
    """GET: all your benchmark runs. POST: run suites on a base model alone (202)."""

    @extend_schema(responses={200: BenchmarkOutput(many=True)})
    def get(self, request):
        return Response(BenchmarkOutput(selectors.benchmark_list(owner=request.user), many=True).data)

    @extend_schema(request=BaseModelBenchmarkInput, responses={202: BenchmarkOutput, **error_responses(400)})
    def post(self, request):
        data = BaseModelBenchmarkInput(data=request.data)
        data.is_valid(raise_exception=True)
        base = base_model_find(data.validated_data["base_model"], owner=request.user)
        if base is None:
            raise InputError("base_model", "no such base model")
        return _queued(request, data.validated_data, base_model=base)


class BenchmarkApi(APIView):
    @extend_schema(responses={200: BenchmarkOutput, **error_responses(404)})
    def get(self, request, run_id):
        return Response(BenchmarkOutput(selectors.benchmark_get(owner=request.user, run_id=run_id)).data)


class BenchmarkCancelApi(APIView):
    @extend_schema(request=None, responses={200: BenchmarkOutput, **error_responses(404, 409)})
    def post(self, request, run_id):
        run = selectors.benchmark_get(owner=request.user, run_id=run_id)
        return Response(BenchmarkOutput(services.benchmark_cancel(run=run, by=request.user)).data)


class SuiteListApi(APIView):
    class SuiteOutput(serializers.Serializer):
        name = serializers.CharField()
        title = serializers.CharField(source="label", help_text="the suite in words")
        general = serializers.BooleanField(help_text="counts for the forgetting warning")
        bundled = serializers.BooleanField(help_text="its data ships with the product (works offline)")
        tasks = serializers.ListField(child=serializers.CharField(), help_text="the harness's task names")

    @extend_schema(responses={200: SuiteOutput(many=True)})
    def get(self, request):
        return Response(self.SuiteOutput(selectors.suite_list(), many=True).data)


class LeaderboardEntryOutput(serializers.Serializer):
    rank = serializers.IntegerField(allow_null=True, help_text="null: not ranked (unfinished, or no value)")
    job = serializers.UUIDField(source="job.id")
    name = serializers.CharField(source="job.name")
    ft_model = serializers.CharField(help_text="the ft: model id that chats with the adapter")
    status = serializers.CharField(source="job.status")
    sweep = serializers.JSONField(allow_null=True, help_text="a sweep's trial: the sweep's id, name and trial number")
    value = serializers.FloatField(allow_null=True, help_text="the metric; null where the run has none")
    settings = serializers.JSONField(help_text="label, text, differs: the key settings and those that differ")
    benchmark = serializers.JSONField(
        allow_null=True,
        help_text="the latest finished benchmark run (else the latest): status, tasks (task, metric, base, adapted, "
        "change, unavailable) and forgetting warnings",
    )
    judge = serializers.JSONField(
        help_text="judgements with this run on one side, from its side: opponent, judge, n, win_rate, ci_low, "
        "ci_high, and agreement with your blind votes (n, agreed, rate, ci_low, ci_high)"
    )
    compare_url = serializers.CharField(help_text="Compare runs: this run beside the best (the best: the top runs)")
    chat_url = serializers.CharField(help_text="the run's chat and compare page; empty without an adapter")


class LeaderboardOutput(serializers.Serializer):
    dataset = serializers.UUIDField(source="dataset.id")
    metric = serializers.CharField(source="metric.name")
    metric_label = serializers.CharField(source="metric.label", help_text="the metric in words")
    direction = serializers.ChoiceField(choices=["lower", "higher"], source="metric.direction")
    hint = serializers.CharField(source="metric.hint", help_text="what the metric means, in words")
    metrics = serializers.SerializerMethodField(help_text="every metric this board can rank by")
    differing = serializers.ListField(child=serializers.CharField(), help_text="the settings the runs differ on")
    entries = LeaderboardEntryOutput(many=True)

    def get_metrics(self, board) -> list[str]:
        return [m.name for m in board.metrics]


class LeaderboardApi(APIView):
    """GET: the runs trained on one of your datasets, ranked by `metric` (eval_loss, the default; exact_match;
    benchmark:<task> or benchmark_change:<task>); finished runs with a value are ranked, the others follow."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "metric", str, description="eval_loss (default), exact_match, benchmark:<task>, benchmark_change:<task>"
            )
        ],
        responses={200: LeaderboardOutput, **error_responses(400, 404)},
    )
    def get(self, request, dataset_id):
        dataset = dataset_get(owner=request.user, dataset_id=dataset_id)
        board = dataset_leaderboard(owner=request.user, dataset=dataset, metric=request.query_params.get("metric"))
        return Response(LeaderboardOutput(board).data)
