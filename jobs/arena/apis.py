"""REST API for chat and compare: ask a round, read a session's answers, vote, stop, win rates.
The compare page's script uses these endpoints too (session auth + CSRF)."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.arena import judgements, selectors, services
from jobs.arena.graders import TRY_MAX_ROWS, grader_run, grader_try
from jobs.arena.models import Judgement
from jobs.base_models.selectors import base_model_find
from jobs.common.ids import is_uuid
from jobs.common.rest import StrictInput
from jobs.common.schema import error_responses
from jobs.training.graders import grader_check
from jobs.training.selectors import job_get
from worker.config import GenerationConfig
from worker.errors import InputError
from worker.graders.spec import grader_json


class ModelIdentityOutput(serializers.Serializer):
    """Who answered: the base model alone, or a job's adapter (id is the base model's or the job's)."""

    kind = serializers.ChoiceField(choices=["base", "adapter"])
    id = serializers.UUIDField()
    name = serializers.CharField()


class ChatAnswerOutput(serializers.Serializer):
    id = serializers.UUIDField()
    side = serializers.SerializerMethodField(help_text="base or adapter; null while its blind round awaits a vote")
    model = serializers.SerializerMethodField(
        help_text="the model that answered; null while its blind round awaits a vote"
    )
    round = serializers.UUIDField(source="round_id", allow_null=True)
    position = serializers.IntegerField(help_text="column in its round, 0 = left")
    prompt = serializers.CharField()
    text = serializers.CharField()
    state = serializers.CharField()
    stopped = serializers.BooleanField(help_text="ended early by a stop request; text is what came before")
    note = serializers.CharField(help_text="what was left out to fit the model's context; empty if nothing")
    created = serializers.DateTimeField()

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_side(self, answer) -> str | None:
        return None if selectors.answer_hidden(answer) else answer.side

    @extend_schema_field(ModelIdentityOutput(allow_null=True))
    def get_model(self, answer) -> dict | None:
        if selectors.answer_hidden(answer):
            return None
        return selectors.model_identity(job=answer.job, base_model=selectors.session_base_model(answer.session))


class ChatAskOutput(serializers.Serializer):
    session = serializers.UUIDField()
    round = serializers.UUIDField()
    blind = serializers.BooleanField()
    answers = ChatAnswerOutput(many=True, help_text="in screen order, left to right")


class JobChatApi(APIView):
    """POST a prompt for two or three models on the job's base (default: the base and the adapted model;
    `contestants` picks "base" and/or succeeded job ids; `blind` shuffles two models and hides them until
    the round's vote), answered by the infer worker; GET the session's answers.
    Live tokens: /chats/<session>/events/."""

    @extend_schema_serializer(component_name="ChatAsk")
    class InputSerializer(StrictInput):
        prompt = serializers.CharField(max_length=20000)
        session = serializers.UUIDField(required=False)
        max_new_tokens = serializers.IntegerField(required=False, min_value=1, max_value=4096)
        temperature = serializers.FloatField(required=False, min_value=0, max_value=5)
        top_p = serializers.FloatField(required=False, min_value=0.01, max_value=1)
        seed = serializers.IntegerField(required=False, min_value=0)
        system_prompt = serializers.CharField(required=False, allow_blank=True, max_length=20000)
        contestants = serializers.ListField(
            child=serializers.CharField(max_length=36),
            required=False,
            min_length=2,
            max_length=services.MAX_CONTESTANTS,
            help_text='"base" and/or ids of your succeeded jobs on the same base',
        )
        blind = serializers.BooleanField(required=False, default=False)

    @extend_schema(request=InputSerializer, responses={201: ChatAskOutput, **error_responses(400, 404, 409)})
    def post(self, request, job_id):
        job = job_get(owner=request.user, job_id=job_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = dict(data.validated_data)
        session = (
            selectors.chat_session_get(owner=request.user, session_id=v.pop("session")) if "session" in v else None
        )
        if session is not None and session.job_id != job.id:
            raise InputError("session", "that chat belongs to another job")
        prompt, contestants, blind = v.pop("prompt"), v.pop("contestants", None), v.pop("blind")
        session, answers = services.chat_ask(
            owner=request.user,
            job=job,
            prompt=prompt,
            generation=GenerationConfig(**v),
            session=session,
            contestants=contestants,
            blind=blind,
        )
        return Response(
            ChatAskOutput(
                {"session": session.id, "round": answers[0].round_id, "blind": blind, "answers": answers}
            ).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(
        parameters=[OpenApiParameter("session", str, required=True)],
        responses={200: ChatAnswerOutput(many=True), **error_responses(404)},
    )
    def get(self, request, job_id):
        job = job_get(owner=request.user, job_id=job_id)
        session_id = request.query_params.get("session", "")
        try:
            session = selectors.chat_session_get(owner=request.user, session_id=session_id)
        except (ValueError, DjangoValidationError):
            raise InputError("session", "must be a chat session id") from None
        if session.job_id != job.id:
            raise Http404("no such chat for this job")
        return Response(ChatAnswerOutput(selectors.chat_answers(session=session), many=True).data)


class ChatSlotOutput(serializers.Serializer):
    answer = serializers.UUIDField()
    position = serializers.IntegerField(help_text="column in its round, 0 = left")
    state = serializers.CharField()
    model = ModelIdentityOutput(allow_null=True, help_text="null while its blind round awaits a vote")


class ChatRoundVoteApi(APIView):
    """POST the owner's verdict on a finished two-model round, once: left, right, tie or both_bad.
    The vote is stored against the two models, not the screen sides; the answer names them."""

    @extend_schema_serializer(component_name="VoteCreate")
    class InputSerializer(StrictInput):
        choice = serializers.ChoiceField(choices=services.VOTE_CHOICES)

    @extend_schema_serializer(component_name="Vote")
    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        round = serializers.UUIDField(source="round_id")
        result = serializers.ChoiceField(
            choices=["first", "second", "tie", "both_bad"],
            help_text="first: first_model was better; second: second_model was",
        )
        first_model = ModelIdentityOutput()
        second_model = ModelIdentityOutput()
        blind = serializers.BooleanField()
        created = serializers.DateTimeField()
        slots = ChatSlotOutput(many=True, help_text="the round's answers left to right, now named")

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer, **error_responses(400, 404, 409)})
    def post(self, request, round_id):
        chat_round = selectors.chat_round_get(owner=request.user, round_id=round_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        vote = services.chat_vote(owner=request.user, chat_round=chat_round, choice=data.validated_data["choice"])
        out = {
            "id": vote.id,
            "round_id": vote.round_id,
            "result": vote.result,
            "blind": vote.blind,
            "created": vote.created,
            "slots": selectors.chat_round_slots(chat_round=chat_round),
            "first_model": selectors.model_identity(job=vote.first_job, base_model=vote.base_model),
            "second_model": selectors.model_identity(job=vote.second_job, base_model=vote.base_model),
        }
        return Response(self.OutputSerializer(out).data, status=status.HTTP_201_CREATED)


class ChatStopApi(APIView):
    """The stop button: the chat's unfinished answers end at their next token (their text so far is
    kept, marked `stopped`); queued ones never start. Answers asked later are not affected."""

    @extend_schema_serializer(component_name="ChatStop")
    class OutputSerializer(serializers.Serializer):
        unfinished = serializers.IntegerField(help_text="answers that were still queued or streaming")

    @extend_schema(request=None, responses={200: OutputSerializer, **error_responses(404)})
    def post(self, request, session_id):
        session = selectors.chat_session_get(owner=request.user, session_id=session_id)
        unfinished = services.chat_stop(owner=request.user, session=session)
        return Response(self.OutputSerializer({"unfinished": unfinished}).data)


class WinRateApi(APIView):
    """The owner's votes, one row per pair of models: the model's wins, losses, ties and both-bad against
    its opponent, and its win rate = (wins + ½ × (ties + both bad)) / n with a 95% Wilson score interval;
    `summary` says the same in plain words. `side_of` (a job id) states each pair from that job's side where
    it is in the pair, and from the adapter's side against the base elsewhere, as the compare page does."""

    @extend_schema_serializer(component_name="WinRate")
    class OutputSerializer(serializers.Serializer):
        model = ModelIdentityOutput()
        opponent = ModelIdentityOutput()
        wins = serializers.IntegerField()
        losses = serializers.IntegerField()
        ties = serializers.IntegerField()
        both_bad = serializers.IntegerField()
        n = serializers.IntegerField()
        win_rate = serializers.FloatField()
        ci_low = serializers.FloatField()
        ci_high = serializers.FloatField()
        summary = serializers.CharField(
            help_text="the row in plain words, from the model's side: \"… won 7 of 10 votes (70 %) against …. "
            'With this few votes the true rate could be anywhere from 40 % to 89 %."'
        )

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "base_model", OpenApiTypes.UUID, required=False, description="only pairs on this base model"
            ),
            OpenApiParameter(
                "side_of",
                OpenApiTypes.UUID,
                required=False,
                description="a job id: state its pairs from its side (others from the adapter's side)",
            ),
        ],
        responses={200: OutputSerializer(many=True), **error_responses(400)},
    )
    def get(self, request):
        base = None
        wanted = request.query_params.get("base_model")
        if wanted is not None:
            if not is_uuid(wanted):
                raise InputError("base_model", "must be a base model id")
            base = base_model_find(wanted, owner=request.user)
            if base is None:
                raise InputError("base_model", "no such base model")
        side_of = request.query_params.get("side_of")
        if side_of is not None and not is_uuid(side_of):
            raise InputError("side_of", "must be a job id")
        rows = selectors.vote_win_rates(
            owner=request.user, base_model=base, side_of=None if side_of is None else str(uuid.UUID(side_of))
        )
        return Response(self.OutputSerializer(rows, many=True).data)


class VotesDatasetApi(APIView):
    """POST: make a preference dataset from your compare votes. Each round voted left or right becomes
    a pair (the prompt with its history; chosen: the preferred answer; rejected: the other); ties,
    "both bad", empty and identical answers are left out and counted. `base_model` narrows it to the
    votes on one base. 422 when no vote makes a pair. The dataset's stats list the rounds it came from."""

    @extend_schema_serializer(component_name="VotesDatasetCreate")
    class InputSerializer(StrictInput):
        name = serializers.CharField(required=False, allow_blank=True, max_length=200)
        base_model = serializers.UUIDField(required=False, help_text="only votes on this base model")

    @extend_schema_serializer(component_name="VotesDataset")
    class OutputSerializer(serializers.Serializer):
        dataset = serializers.UUIDField()
        name = serializers.CharField()
        rows = serializers.IntegerField(help_text="preference pairs in the dataset")
        used = serializers.IntegerField(help_text="votes that became pairs")
        left_out = serializers.DictField(
            child=serializers.IntegerField(),
            help_text="votes left out, by reason: tie, both_bad, empty_answer, identical_answers, too_long",
        )
        left_out_reasons = serializers.DictField(child=serializers.CharField())
        rounds = serializers.ListField(child=serializers.UUIDField(), help_text="the round of each pair, in order")
        url = serializers.CharField(help_text="the dataset's check page")

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer, **error_responses(400, 422)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        base = None
        if "base_model" in data.validated_data:
            base = base_model_find(str(data.validated_data["base_model"]), owner=request.user)
            if base is None:
                raise InputError("base_model", "no such base model")
        dataset, summary = services.votes_dataset_create(
            owner=request.user, name=data.validated_data.get("name", ""), base_model=base
        )
        out = {
            "dataset": dataset.id,
            "name": dataset.name,
            "rows": dataset.rows,
            **summary,
            "left_out_reasons": {k: services.LEFT_OUT_REASONS[k] for k in summary["left_out"]},
            "rounds": dataset.stats["rounds"],
            "url": reverse("dataset-detail", args=[dataset.id]),
        }
        return Response(self.OutputSerializer(out).data, status=status.HTTP_201_CREATED)


class GraderValidateApi(APIView):
    """POST {"grader": {...}}: check a grader in OpenAI's shape (string_check, text_similarity, python,
    score_model, label_model, multi); 200 with the grader as stored, or 400 naming the JSON path of the problem.
    A python grader is loaded in its sandbox; a judge model must be one you can use."""

    @extend_schema_serializer(component_name="GraderValidate")
    class InputSerializer(StrictInput):
        grader = serializers.JSONField(help_text="a grader object, as OpenAI's `openai.types.graders`")

    @extend_schema(request=InputSerializer, responses={200: OpenApiTypes.OBJECT, **error_responses(400, 429)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        grader = grader_check(owner=request.user, grader=data.validated_data["grader"])
        return Response({"grader": grader_json(grader)})


class GraderRunApi(APIView):
    """POST {"grader", "model_sample", "item"}: score one answer (`model_sample`) for one dataset row (`item`)
    with the grader. 200 with OpenAI's GraderRunResponse: `reward`, `sub_rewards` (each named grader's score) and
    `metadata.errors` (what went wrong; a failing part scores 0), plus `metadata.problems` in plain words."""

    @extend_schema_serializer(component_name="GraderRun")
    class InputSerializer(StrictInput):
        grader = serializers.JSONField()
        model_sample = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=100_000)
        item = serializers.JSONField(required=False, help_text="the dataset row the `item.` templates read")

    @extend_schema(request=InputSerializer, responses={200: OpenApiTypes.OBJECT, **error_responses(400, 429)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        return Response(
            grader_run(
                owner=request.user,
                grader=values["grader"],
                model_sample=values["model_sample"],
                item=values.get("item"),
            )
        )


class GraderTryRowOutput(serializers.Serializer):
    prompt = serializers.CharField(help_text="the prompt's last user message")
    answer = serializers.CharField()
    reward = serializers.FloatField(allow_null=True, help_text="null when the model did not answer")
    scores = serializers.DictField(child=serializers.FloatField(), help_text="each named grader's score")
    problems = serializers.ListField(child=serializers.CharField(), help_text="what went wrong, in plain words")


class GraderTryApi(APIView):
    """POST {"dataset", "base_model", "start_from", "grader", "rows"}: try a grader before training. The model the
    job would start from (the base model, or `start_from`'s adapter) answers the first `rows` prompts of your
    prompts dataset once each (temperature 1, as training tries them), and each answer is scored. 200 with one row
    per prompt: the prompt (its last user message), the answer, its reward, each named grader's score and what
    went wrong in plain words (a row the model did not answer in time has reward null)."""

    @extend_schema_serializer(component_name="GraderTry")
    class InputSerializer(StrictInput):
        dataset = serializers.CharField(max_length=36, help_text="a prompts dataset of yours")
        base_model = serializers.CharField(max_length=36, required=False, allow_blank=True)
        start_from = serializers.CharField(
            max_length=36, required=False, allow_blank=True, help_text="a succeeded job whose adapter answers"
        )
        grader = serializers.JSONField(help_text="a grader object, as OpenAI's `openai.types.graders`")
        rows = serializers.IntegerField(required=False, default=3, min_value=1, max_value=TRY_MAX_ROWS)
        max_answer_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=4096)

    @extend_schema_serializer(component_name="GraderTryResult")
    class OutputSerializer(serializers.Serializer):
        rows = GraderTryRowOutput(many=True, help_text="one per prompt, in the dataset's order")

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer, **error_responses(400, 429)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        rows = grader_try(
            owner=request.user,
            dataset_id=values["dataset"],
            base_model_id=values.get("base_model") or None,
            start_from=values.get("start_from") or None,
            grader=values["grader"],
            rows=values["rows"],
            max_answer_tokens=values.get("max_answer_tokens"),
        )
        return Response(self.OutputSerializer({"rows": rows}).data)


class JudgeOrderOutput(serializers.Serializer):
    said = serializers.CharField(help_text="the judge's answer as it gave it")
    verdict = serializers.CharField(allow_null=True, help_text="A, B or tie as read strictly; null when unusable")
    problem = serializers.CharField(help_text="why the answer could not be used; empty when it could")


class JudgementRowOutput(serializers.Serializer):
    prompt = serializers.CharField(help_text="the prompt's last user message")
    round = serializers.UUIDField(allow_null=True, help_text="the blind round the prompt and answers come from")
    answer_a = serializers.CharField(allow_null=True, required=False)
    answer_b = serializers.CharField(allow_null=True, required=False)
    first = JudgeOrderOutput(required=False, help_text="judged with model A's answer shown first (as Answer A)")
    swapped = JudgeOrderOutput(required=False, help_text="judged with model B's answer shown first")
    outcome = serializers.ChoiceField(
        choices=["a", "b", "tie", "failed"],
        allow_null=True,
        help_text="a or b only when both orders named that model; null until judged",
    )
    flipped = serializers.BooleanField(help_text="the two orders named different models (counted as a tie)")
    same_position = serializers.BooleanField(help_text="... because the judge picked the same position both times")
    problem = serializers.CharField(help_text="what went wrong, in plain words; empty when nothing")
    vote = serializers.ChoiceField(
        choices=["a", "b", "tie"], allow_null=True, help_text="your blind vote on this prompt, from model A's side"
    )


class JudgeTallyOutput(serializers.Serializer):
    wins = serializers.IntegerField(help_text="prompts where model A won in both orders")
    losses = serializers.IntegerField(help_text="prompts where model B won in both orders")
    ties = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="prompts without a usable verdict in both orders, left out of n")
    flipped = serializers.IntegerField(help_text="ties that were a change of mind when the order was swapped")
    same_position = serializers.IntegerField(help_text="flips where the judge picked the same position both times")
    n = serializers.IntegerField()
    win_rate = serializers.FloatField(allow_null=True, help_text="(wins + ½ × ties) / n, model A over model B")
    ci_low = serializers.FloatField(allow_null=True, help_text="95% Wilson score interval")
    ci_high = serializers.FloatField(allow_null=True)
    sentence = serializers.CharField()


class JudgeAgreementOutput(serializers.Serializer):
    n = serializers.IntegerField(help_text="judged prompts you voted on blindly")
    agreed = serializers.IntegerField()
    rate = serializers.FloatField(allow_null=True)
    ci_low = serializers.FloatField(allow_null=True, help_text="95% Wilson score interval")
    ci_high = serializers.FloatField(allow_null=True)
    kappa = serializers.FloatField(allow_null=True, help_text="Cohen's kappa over a, b and tie")
    sentence = serializers.CharField()


class JudgementOutput(serializers.Serializer):
    id = serializers.UUIDField()
    url = serializers.CharField()
    status = serializers.CharField(help_text=f"one of {', '.join(Judgement.Status.values)}")
    model_a = serializers.CharField()
    model_b = serializers.CharField()
    judge = serializers.CharField()
    source = serializers.CharField(help_text=f"one of {', '.join(Judgement.Source.values)}")  # type: ignore[assignment]
    done = serializers.IntegerField(help_text="prompts judged so far")
    total = serializers.IntegerField()
    error = serializers.CharField()
    created = serializers.DateTimeField()
    finished = serializers.DateTimeField(allow_null=True)


class JudgementDetailOutput(JudgementOutput):
    result = JudgeTallyOutput(help_text="the judge's win rate of model A over model B, position bias removed")
    agreement = JudgeAgreementOutput(help_text="the judge beside your blind votes on the same prompts")
    rows = JudgementRowOutput(many=True)


def judgement_out(judgement: Judgement) -> dict:
    return {
        **{f: getattr(judgement, f) for f in ("id", "status", "model_a", "model_b", "judge", "source", "done")},
        **{f: getattr(judgement, f) for f in ("error", "created", "finished")},
        "url": reverse("api-judgement", args=[judgement.id]),
        "total": judgement.total,
    }


def judgement_detail_out(*, owner, judgement: Judgement) -> dict:
    report = selectors.judgement_report(owner=owner, judgement=judgement)
    return {
        **judgement_out(judgement),
        "result": report["tally"],
        "agreement": report["agreement"],
        "rows": report["rows"],
    }


class JudgementsApi(APIView):
    """POST: ask a judge model to compare model A with model B (a base model's name or an ft: id each; the judge
    any model you can use) on prompts you give, on the prompts of your blind votes on the two models (the answers
    you saw are judged), or on a job's held-out examples. Each pair is judged twice, each answer shown first once;
    a win counts only when both orders agree, else a tie. The work runs in the background: GET its `url` for
    progress, the win rate and the judge's agreement with your votes. GET: your judgements, newest first."""

    @extend_schema_serializer(component_name="JudgementCreate")
    class InputSerializer(StrictInput):
        model_a = serializers.CharField(max_length=200)
        model_b = serializers.CharField(max_length=200)
        judge = serializers.CharField(max_length=200, help_text="the judge model: a base model's name or an ft: id")
        source = serializers.CharField(  # type: ignore[assignment]  # checked by the service, naming the field
            max_length=10,
            default=Judgement.Source.PROMPTS,
            help_text="prompts (the prompts you give), votes (those of your blind votes on the two models) "
            "or held_out (a job's held-out examples)",
        )
        prompts = serializers.ListField(
            child=serializers.CharField(max_length=judgements.MAX_PROMPT_CHARS),
            required=False,
            min_length=1,
            max_length=judgements.MAX_PROMPTS,
            help_text="source prompts: the prompts to answer",
        )
        job = serializers.CharField(max_length=36, required=False, help_text="source held_out: the job")
        count = serializers.IntegerField(
            required=False,
            default=10,
            min_value=1,
            max_value=judgements.MAX_PROMPTS,
            help_text="source votes or held_out: at most this many prompts",
        )
        max_answer_tokens = serializers.IntegerField(
            required=False, default=128, min_value=1, max_value=judgements.MAX_ANSWER_TOKENS
        )

    @extend_schema(request=InputSerializer, responses={201: JudgementDetailOutput, **error_responses(400)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        judgement = judgements.judgement_create(owner=request.user, **data.validated_data)
        out = judgement_detail_out(owner=request.user, judgement=judgement)
        return Response(JudgementDetailOutput(out).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: JudgementOutput(many=True)})
    def get(self, request):
        rows = selectors.judgement_list(owner=request.user)[:50]
        return Response(JudgementOutput([judgement_out(j) for j in rows], many=True).data)


class JudgementApi(APIView):
    """GET one judgement: its status and progress, each prompt's answers and verdicts in both orders, the judge's
    win rate of model A over model B with a 95% interval, and its agreement with your blind votes (n, %, interval,
    Cohen's kappa) on the same prompts."""

    @extend_schema(responses={200: JudgementDetailOutput, **error_responses(404)})
    def get(self, request, judgement_id):
        judgement = selectors.judgement_get(owner=request.user, judgement_id=judgement_id)
        return Response(JudgementDetailOutput(judgement_detail_out(owner=request.user, judgement=judgement)).data)


class JudgementCancelApi(APIView):
    """POST: stop a queued or running judgement; the prompts judged so far stay. 409 once it has ended."""

    @extend_schema(request=None, responses={200: JudgementOutput, **error_responses(404, 409)})
    def post(self, request, judgement_id):
        judgement = selectors.judgement_get(owner=request.user, judgement_id=judgement_id)
        judgement = judgements.judgement_cancel(owner=request.user, judgement=judgement)
        return Response(JudgementOutput(judgement_out(judgement)).data)
