"""REST API for sweeps (/api/v1/sweeps/): thin DRF views over jobs.sweeps.services. A sweep's answer holds its
status, its trials (job, settings, status including pruned, metric), the best trial's `ft:` id and the promoted
result."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.base_models.selectors import base_model_find
from jobs.common.rest import StrictInput
from jobs.common.schema import error_responses
from jobs.datasets.selectors import dataset_find
from jobs.sweeps import selectors, services
from worker.errors import InputError


class TrialOutput(serializers.Serializer):
    number = serializers.IntegerField()
    job = serializers.UUIDField(allow_null=True, help_text="the trial's job (an ordinary job; null if none was made)")
    settings = serializers.JSONField(help_text="the settings Optuna chose for this trial")
    status = serializers.CharField(help_text="its job's status: queued, running, paused, succeeded, pruned, failed...")
    state = serializers.CharField(help_text="for the study: running, complete, pruned or failed")
    metric = serializers.FloatField(allow_null=True, help_text="the sweep's metric at the end (pruned: at its stop)")
    step = serializers.IntegerField()
    total_steps = serializers.IntegerField()
    fine_tuned_model = serializers.CharField(allow_null=True, help_text="its `ft:` id once it has an adapter")
    error = serializers.CharField()


class SweepOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    status = serializers.CharField(help_text="running, paused, succeeded, failed or cancelled")
    waiting = serializers.CharField(help_text="why no new trial starts now (a quota); empty otherwise")
    dataset = serializers.UUIDField(allow_null=True)
    base_model = serializers.UUIDField()
    space = serializers.JSONField()
    fixed = serializers.JSONField()
    metric = serializers.CharField()
    direction = serializers.CharField(help_text="minimize or maximize")
    sampler = serializers.CharField()
    pruner = serializers.CharField()
    trials_budget = serializers.IntegerField()
    minutes = serializers.IntegerField(allow_null=True)
    parallelism = serializers.IntegerField()
    trials = TrialOutput(many=True)
    best_trial = serializers.IntegerField(allow_null=True)
    best_metric = serializers.FloatField(allow_null=True)
    fine_tuned_model = serializers.CharField(allow_null=True, help_text="the best finished trial's `ft:` id")
    result = serializers.CharField(allow_null=True, help_text="the promoted trial's `ft:` id (after Promote)")
    result_job = serializers.UUIDField(allow_null=True)
    importance = serializers.DictField(
        child=serializers.FloatField(), help_text="setting -> its importance (Optuna's PED-ANOVA); {} until 2 finish"
    )
    curves = serializers.DictField(required=False, help_text="trial number -> [[step, metric], ...]")
    created = serializers.DateTimeField()
    finished = serializers.DateTimeField(allow_null=True)


class SweepListApi(APIView):
    """GET: your sweeps, newest first. POST: search a job's settings with Optuna over many trials."""

    @extend_schema_serializer(component_name="SweepCreate")
    class InputSerializer(StrictInput):
        dataset = serializers.UUIDField()
        base_model = serializers.UUIDField()
        space = serializers.JSONField(
            help_text='setting -> [low, high], [low, high, "log"] or a list of 3+ choices, e.g. '
            '{"learning_rate": [1e-4, 3e-3, "log"], "rank": [8, 16, 32], "n_epochs": [1, 4]}'
        )
        fixed = serializers.JSONField(required=False, default=dict, help_text="settings every trial shares")
        trials = serializers.JSONField(required=False, help_text="how many trials at most (1-200)")
        metric = serializers.CharField(
            required=False, default="eval_loss", help_text="eval_loss (lower is better) or exact_match"
        )
        sampler = serializers.CharField(required=False, default="tpe", help_text="tpe or grid")
        pruner = serializers.CharField(
            required=False, default="successive_halving", help_text="successive_halving, hyperband or none"
        )
        parallelism = serializers.JSONField(required=False, help_text="trials at once, at most (1-16)")
        minutes = serializers.JSONField(required=False, help_text="no new trial after this long")
        seed = serializers.JSONField(required=False, help_text="the sampler's seed (the same seed asks the same)")
        name = serializers.CharField(required=False, default="", allow_blank=True, max_length=200)
        validation = serializers.CharField(
            required=False, default="split", help_text="split (a share of the dataset) or dataset (another one)"
        )
        validation_percent = serializers.FloatField(required=False, default=10, min_value=0.1, max_value=90)
        validation_seed = serializers.IntegerField(required=False, default=42, min_value=0)
        validation_dataset = serializers.UUIDField(required=False)

    @extend_schema(responses={200: SweepOutput(many=True), **error_responses()})
    def get(self, request):
        sweeps = selectors.sweep_list(owner=request.user)[:100]
        return Response([selectors.sweep_report(s) for s in sweeps])

    @extend_schema(request=InputSerializer, responses={201: SweepOutput, **error_responses(400)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        dataset = dataset_find(owner=request.user, dataset_id=values.pop("dataset"))
        if dataset is None:
            raise InputError("dataset", "no such dataset")
        base = base_model_find(values.pop("base_model"), owner=request.user)
        if base is None:
            raise InputError("base_model", "no such base model")
        other_id = values.pop("validation_dataset", None)
        other = None
        if other_id is not None:
            other = dataset_find(owner=request.user, dataset_id=other_id)
            if other is None:
                raise InputError("validation_dataset", "no such dataset")
        sweep = services.sweep_create(
            owner=request.user, dataset=dataset, base_model=base, validation_dataset=other, **values
        )
        return Response(selectors.sweep_report(sweep), status=status.HTTP_201_CREATED)


class SweepDetailApi(APIView):
    @extend_schema(responses={200: SweepOutput, **error_responses(404)})
    def get(self, request, sweep_id):
        """The sweep with every trial; `?curves=1` adds each trial's metric per step (the page's chart)."""
        sweep = selectors.sweep_get(owner=request.user, sweep_id=sweep_id)
        return Response(selectors.sweep_report(sweep, curves=request.query_params.get("curves") == "1"))


class SweepActionApi(APIView):
    """POST with no body: one state change of a sweep (the subclass names the service)."""

    @extend_schema(request=None, responses={200: SweepOutput, **error_responses(404, 409)})
    def post(self, request, sweep_id):
        sweep = self.service(sweep=selectors.sweep_get(owner=request.user, sweep_id=sweep_id), by=request.user)
        return Response(selectors.sweep_report(sweep))


class SweepPauseApi(SweepActionApi):
    service = staticmethod(services.sweep_pause)


class SweepResumeApi(SweepActionApi):
    service = staticmethod(services.sweep_resume)


class SweepCancelApi(SweepActionApi):
    service = staticmethod(services.sweep_cancel)


class SweepPromoteApi(SweepActionApi):
    """The best finished trial's adapter becomes the sweep's result."""

    service = staticmethod(services.sweep_promote)
