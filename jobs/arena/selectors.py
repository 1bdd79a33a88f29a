"""Reads of chats, rounds and votes. Every selector of user data takes the owner."""

from __future__ import annotations

from collections.abc import Hashable

from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404

from jobs.arena.judging import OUTCOMES, Agreement, JudgeTally, PairVerdict, vote_outcome
from jobs.arena.models import ChatAnswer, ChatRound, ChatSession, Judgement, Vote
from jobs.arena.win_rate import PairRecord, win_rate_sentence, win_rate_table
from jobs.base_models.models import BaseModel
from jobs.training.models import FineTuneJob
from jobs.training.selectors import model_named


def chat_session_get(*, owner, session_id) -> ChatSession:
    return get_object_or_404(ChatSession.objects.select_related("job"), owner=owner, id=session_id)


def session_base_model(session: ChatSession) -> BaseModel:
    """The base every model of the session runs on (its job's, or an API completion's base alone)."""
    base = session.job.base_model if session.job is not None else session.base_model
    assert base is not None, "a chat session has a job or a base model"
    return base


def chat_answers(*, session: ChatSession) -> QuerySet[ChatAnswer]:
    return (
        ChatAnswer.objects.filter(session=session)
        .select_related("round__vote", "job", "session__job__base_model", "session__base_model")
        .order_by("created", "position", "side")
    )


def answer_history(answer: ChatAnswer) -> list[dict[str, str]]:
    """The conversation a model was given for this answer, ending with its user prompt (no system prompt)."""
    if answer.messages:  # an API completion carries its whole conversation
        return list(answer.messages)
    if answer.round is not None and answer.round.blind:  # each blind round stands alone: its columns mix models
        return [{"role": "user", "content": answer.prompt}]
    # Each model continues its own conversation in the session.
    earlier = (
        ChatAnswer.objects.filter(
            session=answer.session,
            job=answer.job,
            side=answer.side,
            state=ChatAnswer.State.DONE,
            created__lt=answer.created,
        )
        .exclude(round__blind=True)
        .order_by("created")
    )
    messages: list[dict[str, str]] = []
    for turn in earlier:
        messages += [{"role": "user", "content": turn.prompt}, {"role": "assistant", "content": turn.text}]
    return messages + [{"role": "user", "content": answer.prompt}]


def chat_round_get(*, owner, round_id) -> ChatRound:
    """The owner's comparison round, or Http404."""
    return get_object_or_404(
        ChatRound.objects.select_related("session__job__base_model", "session__base_model"),
        session__owner=owner,
        id=round_id,
    )


def model_identity(*, job: FineTuneJob | None, base_model: BaseModel) -> dict:
    """Who answered: the base model alone (job None) or a job's adapter, as kind, id and a display name."""
    if job is None:
        return {"kind": "base", "id": str(base_model.id), "name": f"{base_model.name} (base)"}
    return {
        "kind": "adapter",
        "id": str(job.id),
        "name": f"{job.name} ({job.short_id})" if job.name else f"job {job.short_id}",
    }


def answer_hidden(answer: ChatAnswer) -> bool:
    """A blind round's answers keep their model secret until the round has a vote."""
    return answer.round is not None and answer.round.blind and not hasattr(answer.round, "vote")


def answer_event_meta(answer: ChatAnswer) -> dict:
    """What live chat events say about an answer: its id and column, and its side unless hidden."""
    meta = {"answer": str(answer.id), "position": answer.position}
    if not answer_hidden(answer):
        meta["side"] = answer.side
    return meta


def chat_round_slots(*, chat_round: ChatRound) -> list[dict]:
    """The round's answers left to right, each with its model, or None while the round is blind."""
    base = session_base_model(chat_round.session)
    answers = chat_round.answers.select_related("job", "round__vote").order_by("position")
    return [
        {
            "answer": str(a.id),
            "position": a.position,
            "state": a.state,
            "model": None if answer_hidden(a) else model_identity(job=a.job, base_model=base),
        }
        for a in answers
    ]


def vote_counts(*, owner, base_model: BaseModel | None = None) -> dict[str, int]:
    """How many of the owner's votes have each result (first, second, tie, both_bad), every result present."""
    votes = Vote.objects.filter(owner=owner)
    if base_model is not None:
        votes = votes.filter(base_model=base_model)
    counts = {r: 0 for r in Vote.Result.values}
    for row in votes.values("result").annotate(n=Count("id")):
        counts[row["result"]] = row["n"]
    return counts


def vote_win_rates(*, owner, base_model: BaseModel | None = None, side_of: str | None = None) -> list[dict]:
    """The owner's votes as one row per pair of models (see jobs.arena.win_rate for the counting), each also in
    plain words (`summary`). A row is stated from its first model's side (the base where there is one);
    with `side_of` (a job id) from that job's side where it is in the pair, and from the adapter's side
    against the base elsewhere, as the compare page shows them."""
    votes = Vote.objects.filter(owner=owner).select_related("base_model", "first_job", "second_job").order_by("created")
    if base_model is not None:
        votes = votes.filter(base_model=base_model)
    identities: dict[Hashable, dict] = {}

    def key(job, base) -> str:
        identity = model_identity(job=job, base_model=base)
        identities.setdefault(identity["id"], identity)
        return identity["id"]

    def oriented(record: PairRecord) -> PairRecord:
        if side_of is None:
            return record
        if side_of in (record.first, record.second):
            return record if record.first == side_of else record.flipped()
        return record.flipped() if identities[record.first]["kind"] == "base" else record

    table = win_rate_table((key(v.first_job, v.base_model), key(v.second_job, v.base_model), v.result) for v in votes)
    rows = []
    for record in map(oriented, table):
        low, high = record.interval
        model, opponent = identities[record.first], identities[record.second]
        rows.append(
            {
                "model": model,
                "opponent": opponent,
                "wins": record.wins,
                "losses": record.losses,
                "ties": record.ties,
                "both_bad": record.both_bad,
                "n": record.n,
                "win_rate": record.win_rate,
                "ci_low": low,
                "ci_high": high,
                "summary": win_rate_sentence(record, model["name"], opponent["name"]),
            }
        )
    return rows


# --- judgements ------------------------------------------------------------------------------------

Model = tuple[BaseModel, FineTuneJob | None]  # as jobs.training.selectors.model_named finds a model


def _vote_order(model: Model) -> tuple[int, str]:
    """A vote's canonical order of its two models (jobs.arena.services): the base alone first, then by job id."""
    return (0, "") if model[1] is None else (1, str(model[1].id))


def vote_pair_filter(*, a: Model, b: Model) -> Q:
    """The votes on models a and b (one base model), whichever order their round showed them in."""
    first, second = sorted((a, b), key=_vote_order)
    return Q(base_model=a[0], first_job=first[1], second_job=second[1])


def judgement_get(*, owner, judgement_id) -> Judgement:
    """The owner's judgement, or Http404 (the same for another user's)."""
    return get_object_or_404(Judgement, owner=owner, id=judgement_id)


def judgement_list(*, owner) -> QuerySet[Judgement]:
    return Judgement.objects.filter(owner=owner)


def judgement_votes(*, owner, judgement: Judgement) -> dict[int, str]:
    """The owner's blind votes on the judged prompts, by row index, each from model A's side (a, b or tie): the
    vote on the row's own round, else the newest blind vote on the two models whose prompt is the row's."""
    a, b = model_named(owner=owner, name=judgement.model_a), model_named(owner=owner, name=judgement.model_b)
    if a is None or b is None or a[0].id != b[0].id:
        return {}
    a_first = sorted((a, b), key=_vote_order)[0] is a
    votes = Vote.objects.filter(vote_pair_filter(a=a, b=b), owner=owner, blind=True).order_by("created")
    by_round = {str(v.round_id): v.result for v in votes}
    by_prompt: dict[str, str] = {}
    prompts = ChatAnswer.objects.filter(round__vote__in=votes, position=0).values_list("round__vote__result", "prompt")
    for voted, prompt in prompts:  # oldest first: the newest vote on a prompt wins
        by_prompt[prompt] = voted
    found = {}
    for i, row in enumerate(judgement.rows):
        result: str | None = by_round.get(row.get("round") or "")
        result = result or by_prompt.get(row["messages"][-1]["content"])
        if result is not None:
            found[i] = vote_outcome(result, a_first=a_first)
    return found


def judgement_report(*, owner, judgement: Judgement) -> dict:
    """The judged prompts so far: the judge's win rate of model A over model B (position bias removed, see
    jobs.arena.judging) and its agreement with the owner's blind votes on the same prompts, each with a 95% Wilson
    interval and in plain words; and each prompt's row with its answers, verdicts and the owner's vote (or None)."""
    judged = [row for row in judgement.rows if "outcome" in row]
    verdicts = [
        PairVerdict(
            (row.get("first") or {}).get("verdict"),
            (row.get("swapped") or {}).get("verdict"),
            row["outcome"],
            row.get("flipped", False),
            row.get("same_position", False),
        )
        for row in judged
    ]
    votes = judgement_votes(owner=owner, judgement=judgement)
    agreement = Agreement(
        [
            (row["outcome"], votes[i])
            for i, row in enumerate(judgement.rows)
            if i in votes and row.get("outcome") in OUTCOMES
        ]
    )
    return {
        "tally": JudgeTally.of(verdicts).summary(judgement.model_a, judgement.model_b),
        "agreement": agreement.summary(),
        "rows": [
            {
                "prompt": row["messages"][-1]["content"],
                "round": row.get("round"),
                "answer_a": row.get("answer_a"),
                "answer_b": row.get("answer_b"),
                **{key: row[key] for key in ("first", "swapped") if key in row},
                "outcome": row.get("outcome"),
                "flipped": row.get("flipped", False),
                "same_position": row.get("same_position", False),
                "problem": row.get("problem", ""),
                "vote": votes.get(i),
            }
            for i, row in enumerate(judgement.rows)
        ],
    }
