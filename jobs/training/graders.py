"""Graders on the web side: `grader_check` checks a grader as OpenAI's `/fine_tuning/alpha/graders/validate`
does, and more: the shape (`worker.graders.spec`), that each judge model is one the owner can use, and that each
python grader loads in its sandbox. `grader_sandbox` holds a python child under a slot (GRADER_CHILDREN_PER_USER
and GRADER_CHILDREN_TOTAL across web processes) so no user can start children without end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from jobs.common import blobs
from jobs.common.child_slots import SlotCaps, child_slot
from jobs.training.selectors import model_named
from worker.errors import InputError
from worker.graders.python_sandbox import GraderSourceError, PythonSandbox, SandboxLimits
from worker.graders.spec import (
    Grader,
    LabelModel,
    MultiGrader,
    PythonGrader,
    ScoreModel,
    SingleGrader,
    grader_json,
    parse_grader,
)

SLOT_MARGIN_SECONDS = 30


def grader_limits() -> SandboxLimits:
    """The python grader's limits per answer (GRADER_SECONDS, GRADER_CPU_SECONDS, GRADER_MEMORY_MB)."""
    return SandboxLimits(
        seconds=settings.GRADER_SECONDS, cpu_seconds=settings.GRADER_CPU_SECONDS, memory_mb=settings.GRADER_MEMORY_MB
    )


@contextmanager
def grader_slot(owner, seconds: float) -> Iterator[None]:
    """One grader child for `owner` for up to `seconds`; Busy (429) when the user's or the server's are taken."""
    per_user = settings.GRADER_CHILDREN_PER_USER
    caps = SlotCaps(
        user_key=f"grader-slots:user:{owner.pk}",
        total_key="grader-slots:all",
        per_user=per_user,
        total=settings.GRADER_CHILDREN_TOTAL,
        seconds=int(seconds) + SLOT_MARGIN_SECONDS,
        user_busy=f"you already have {per_user} python graders running; wait for one to finish and try again",
        all_busy="the server is running as many python graders as it can at once; try again in a few seconds",
    )
    with child_slot(caps):
        yield


def grader_parts(grader: Grader, path: str = "grader") -> list[tuple[str, SingleGrader]]:
    """Each single grader with its JSON path (a multi grader's parts are `grader.graders.<key>`)."""
    if isinstance(grader, MultiGrader):
        return [(f"{path}.graders.{key}", inner) for key, inner in grader.graders]
    return [(path, grader)]


def job_grader(*, owner, grader: object, load_python: bool = True) -> dict:
    """A reinforcement job's grader, checked, as the job keeps it (OpenAI's shape); its judge models are models
    the owner can use (`job_judges` finds them for the worker)."""
    if grader is None:
        raise InputError(
            "grader",
            "reinforcement needs a grader that scores each answer: e.g. a string_check against a field of your "
            "data, a text_similarity, a python grade(sample, item) or a multi grader combining them",
        )
    return grader_json(grader_check(owner=owner, grader=grader, load_python=load_python))


def job_judges(*, owner, grader: dict | None) -> dict[str, dict] | None:
    """The judge models of a job's grader for the worker (`worker.judges.LocalJudge`): by name, the base model's
    folder on this machine and the adapter's (an `ft:` model's, from the store when this machine lacks it)."""
    if not grader:
        return None
    judges: dict[str, dict] = {}
    for path, part in grader_parts(parse_grader(grader)):
        if not isinstance(part, (ScoreModel, LabelModel)) or part.model in judges:
            continue
        found = model_named(owner=owner, name=part.model)
        if found is None:
            raise InputError(f"{path}.model", f"the judge model '{part.model}' has been deleted or is not yours")
        base, job = found
        adapter = str(blobs.fetch(job.adapter.folder)) if job is not None else None
        judges[part.model] = {"base": base.local_path, "adapter": adapter, "max_tokens": settings.GRADER_JUDGE_TOKENS}
    return judges or None


def grader_check(*, owner, grader: object, load_python: bool = True) -> Grader:
    """The grader, checked: InputError naming the JSON path of the first problem. `load_python`: each python
    grader is loaded in its sandbox (off for the form's estimate, which runs on every change)."""
    parsed = parse_grader(grader)
    for path, part in grader_parts(parsed):
        if isinstance(part, (ScoreModel, LabelModel)) and model_named(owner=owner, name=part.model) is None:
            raise InputError(
                f"{path}.model",
                f"there is no model named '{part.model}' you can use: name a base model or one of your ft: models",
            )
        if isinstance(part, PythonGrader) and load_python:
            limits = grader_limits()
            sandbox = PythonSandbox(part.source, limits)
            with grader_slot(owner, limits.start_seconds):
                try:
                    sandbox.start()
                except GraderSourceError as exc:
                    raise InputError(f"{path}.source", f"cannot be loaded: {exc}") from None
                finally:
                    sandbox.close()
    return parsed


def judge_paths(*, owner, grader: dict | None, base_model, config) -> list[str]:
    """The folders of the judge bases a job loads beside its own model, for the estimate: a judge that is the job's
    base alone judges with the training model (on one device) and loads nothing."""
    paths = []
    for _path, part in grader_parts(parse_grader(grader)) if grader else []:
        found = model_named(owner=owner, name=part.model) if isinstance(part, (ScoreModel, LabelModel)) else None
        if found is None:
            continue
        path = found[0].local_path
        if found[1] is not None or config.devices > 1 or Path(path).resolve() != Path(base_model.local_path).resolve():
            paths.append(path)
    return paths
