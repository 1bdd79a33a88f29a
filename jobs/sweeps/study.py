"""The sweep's Optuna study, rebuilt in memory from the sweep's rows whenever a decision is needed (ask for the
next trial's settings, prune a running trial, rank the settings' importance): the database holds the study, so
any process can decide and a restart loses nothing. Optuna's own RDB storage (SQLAlchemy) is not used.

Pure functions over plain records (`TrialRecord`), so the decisions are tested against Optuna directly.

A search space maps a TrainConfig setting to `[low, high]` (a range; `[low, high, "log"]` searched on a log
scale), to a list of three or more values (choices), or to `{"low", "high", "log"}` / `{"choices": [...]}`."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState, create_trial

from worker.config import ConfigError, TrainConfig, setting_metadata
from worker.errors import InputError

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the rows and the page say what happens, not Optuna's log

SAMPLERS = ("tpe", "grid")
PRUNERS = ("successive_halving", "hyperband", "none")
LOSS_METRIC = "eval_loss"
MAX_GRID = 1000  # a grid sweep enumerates its points: a space with more is refused


# A trial row's state, in Optuna's words (the job's own status is shown beside it).
RUNNING, COMPLETE, PRUNED, FAILED = "running", "complete", "pruned", "failed"
_OPTUNA_STATE = {RUNNING: TrialState.RUNNING, COMPLETE: TrialState.COMPLETE, PRUNED: TrialState.PRUNED}


@dataclass(frozen=True)
class Metric:
    """What ranks the trials: `name` as the user gave it, its direction, and how a per-step point reads it."""

    name: str
    direction: str  # minimize or maximize
    step_key: str  # the MetricPoint key read at each evaluation, for the pruner
    step_sign: float = 1.0  # -1: the step metric runs the other way (eval loss as the proxy of a score)

    def step_value(self, point: Mapping[str, Any]) -> float | None:
        value = point.get(self.step_key)
        return None if value is None else self.step_sign * float(value)


def metric_of(name: str, config: TrainConfig) -> Metric:
    """The metric named `name`: eval_loss (lower is better), exact_match (the end-of-job evaluation's exact answers,
    higher is better; eval loss, negated, stands in for it while training), eval_reward or a grader's name
    (reinforcement: the validation reward, higher is better). InputError on `metric` for any other."""
    if name == LOSS_METRIC:
        if config.is_reinforcement:
            raise InputError("metric", "a reinforcement job reports eval_reward (or a grader's name), not eval_loss")
        return Metric(name, "minimize", "eval_loss")
    if name == "exact_match":
        if config.is_reinforcement or config.is_preference:
            raise InputError("metric", "exact_match is measured for supervised jobs only")
        return Metric(name, "maximize", "eval_loss", -1.0)
    if not config.is_reinforcement:
        raise InputError(
            "metric", f"must be eval_loss or exact_match (a grader's name needs method reinforcement), got {name!r}"
        )
    if name == "eval_reward":
        return Metric(name, "maximize", "eval_reward")
    return Metric(name, "maximize", f"eval_reward/{name}")


# --- the search space ------------------------------------------------------------------------------


def _setting_name(key: str, known: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The TrainConfig setting `key` names: its own name, or the OpenAI name (`n_epochs` for epochs)."""
    if key in known:
        return key
    for name, meta in known.items():
        if meta["openai"].rpartition(".")[2] == key and meta["openai"].startswith("hyperparameters."):
            return name
    return None


def _checked_value(name: str, value: Any, fixed: Mapping[str, Any], path: str) -> Any:
    """`value` for setting `name` as TrainConfig takes it beside the fixed settings; InputError on `path`."""
    try:
        TrainConfig.from_dict({**fixed, name: value})
    except ConfigError as exc:
        if exc.field == name:
            raise InputError(path, exc.message) from None
        raise InputError(path, f"{value!r} does not go with the fixed settings: {exc}") from None
    return value


def parse_space(space: Any, fixed: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """The search space as Optuna's distributions, every name and bound checked against TrainConfig's
    metadata (beside `fixed`); InputError naming `space.<setting>`."""
    if not isinstance(space, dict) or not space:
        raise InputError("space", 'give at least one setting to search, e.g. {"learning_rate": [1e-4, 3e-3, "log"]}')
    known = setting_metadata(TrainConfig)
    out: dict[str, BaseDistribution] = {}
    for key, spec in space.items():
        path = f"space.{key}"
        name = _setting_name(str(key), known)
        if name is None:
            raise InputError(path, f"not a job setting; the settings are: {', '.join(known)}")
        if name in fixed:
            raise InputError(path, "this setting is also in fixed; search it or fix it, not both")
        if name in out:
            raise InputError(path, f"{name} is in the space twice")
        kind = known[name]["type"]
        out[name] = _distribution(name, kind, spec, fixed, path)
    return out


def _distribution(name: str, kind: str, spec: Any, fixed: Mapping[str, Any], path: str) -> BaseDistribution:
    if isinstance(spec, dict):
        if set(spec) == {"choices"}:
            return _choices(name, spec["choices"], fixed, path)
        if not {"low", "high"} <= set(spec) or not set(spec) <= {"low", "high", "log"}:
            raise InputError(path, 'an object must be {"low", "high"} (and "log": true) or {"choices": [...]}')
        return _range(name, kind, spec["low"], spec["high"], bool(spec.get("log")), fixed, path)
    if not isinstance(spec, list) or not spec:
        raise InputError(path, 'must be [low, high], [low, high, "log"] or a list of three or more values')
    is_range = kind in ("int", "float") and (len(spec) == 2 or (len(spec) == 3 and spec[2] == "log"))
    if is_range:
        return _range(name, kind, spec[0], spec[1], len(spec) == 3, fixed, path)
    return _choices(name, spec, fixed, path)


def _range(name, kind, low, high, log_scale, fixed, path) -> BaseDistribution:
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise InputError(path, f"the bounds must be numbers, got {bound!r}")
        if kind == "int" and not float(bound).is_integer():
            raise InputError(path, f"{name} takes whole numbers, got {bound!r}")
        _checked_value(name, int(bound) if kind == "int" else float(bound), fixed, path)
    if not low < high:
        raise InputError(path, f"low must be below high (got {low!r} and {high!r})")
    if log_scale and low <= 0:
        raise InputError(path, "a log-scale range must start above 0")
    if kind == "int":
        return IntDistribution(int(low), int(high), log=log_scale)
    return FloatDistribution(float(low), float(high), log=log_scale)


def _choices(name, values, fixed, path) -> BaseDistribution:
    if not isinstance(values, list) or not values:
        raise InputError(path, "choices must be a non-empty list")
    if len(set(map(repr, values))) != len(values):
        raise InputError(path, "the choices repeat a value")
    for value in values:
        if isinstance(value, (dict, list)):
            raise InputError(path, f"a choice must be a number, a string or true/false, got {value!r}")
        _checked_value(name, value, fixed, path)
    return CategoricalDistribution(values)


def space_json(distributions: Mapping[str, BaseDistribution]) -> dict[str, str]:
    """The distributions as stored on the sweep's row (Optuna's own JSON form)."""
    return {name: optuna.distributions.distribution_to_json(d) for name, d in distributions.items()}


def space_of(stored: Mapping[str, str]) -> dict[str, BaseDistribution]:
    return {name: optuna.distributions.json_to_distribution(d) for name, d in stored.items()}


def grid_of(distributions: Mapping[str, BaseDistribution]) -> dict[str, list]:
    """Every point of a grid sweep; InputError on `space.<setting>` for a float range (it has no grid)."""
    grid: dict[str, list] = {}
    for name, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution):
            grid[name] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise InputError(f"space.{name}", "a grid sweep needs a list of values, not a range of numbers")
    if math.prod(len(v) for v in grid.values()) > MAX_GRID:
        raise InputError("space", f"the grid has more than {MAX_GRID} points; give fewer values or use tpe")
    return grid


# --- the study, rebuilt from the rows -----------------------------------------------------------


@dataclass
class TrialRecord:
    """One trial as the rows keep it: number, settings, state (running, complete, pruned, failed), final value,
    the step metric at each evaluation, and the system attributes the pruner keeps (its rungs)."""

    number: int
    params: dict[str, Any]
    state: str
    value: float | None = None
    intermediate: dict[int, float] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudySpec:
    """The sweep's fixed choices: direction, space, sampler, pruner and seed."""

    name: str
    direction: str
    space: dict[str, BaseDistribution]
    sampler: str = "tpe"
    pruner: str = "successive_halving"
    seed: int = 0
    trials: int = 8
    min_resource: int = 1  # the first step at which the pruner may stop a trial


def build_sampler(spec: StudySpec, number: int) -> optuna.samplers.BaseSampler:
    """The sampler for asking trial `number`: seeded from the sweep and the number, as the study is rebuilt for
    every question (one seed for all would ask the same random point again)."""
    seed = (spec.seed * 100_003 + number) % 2**32
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(grid_of(spec.space), seed=seed)
    startup = min(10, max(2, spec.trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """Successive halving (rungs at steps m, 4m, 16m, ... with m = `min_resource`; a trial goes on while it is in
    the best quarter of those that reached its rung), Hyperband over it, or none."""
    if spec.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_resource, reduction_factor=4)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_resource, max_resource="auto", reduction_factor=3)
    return optuna.pruners.NopPruner()


def frozen(record: TrialRecord, space: Mapping[str, BaseDistribution]) -> FrozenTrial:
    state = _OPTUNA_STATE.get(record.state, TrialState.FAIL)
    distributions = {name: space[name] for name in record.params if name in space}
    params = {name: record.params[name] for name in distributions}
    return create_trial(
        state=state,
        value=record.value if state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
        params=params,
        distributions=distributions,
        intermediate_values=dict(record.intermediate),
        system_attrs=dict(record.system_attrs),
    )


def build_study(spec: StudySpec, records: list[TrialRecord], *, number: int | None = None) -> optuna.Study:
    """An in-memory study holding `records` (in trial-number order), with the sweep's sampler and pruner."""
    study = optuna.create_study(
        study_name=spec.name,
        direction=StudyDirection.MINIMIZE if spec.direction == "minimize" else StudyDirection.MAXIMIZE,
        sampler=build_sampler(spec, len(records) if number is None else number),
        pruner=build_pruner(spec),
    )
    study.add_trials([frozen(r, spec.space) for r in sorted(records, key=lambda r: r.number)])
    return study


def ask(spec: StudySpec, records: list[TrialRecord]) -> dict[str, Any]:
    """The settings of the next trial (number `len(records)`), as the sampler picks them given every trial so far
    (running ones included, as constant liars)."""
    study = build_study(spec, records)
    trial = study.ask(dict(spec.space))
    return dict(trial.params)


def should_prune(spec: StudySpec, records: list[TrialRecord], number: int) -> tuple[bool, dict[str, Any]]:
    """The pruner's verdict on running trial `number` at its last reported step, and the system attributes it
    leaves on that trial (the rungs it reached), to store on its row for the next decisions."""
    study = build_study(spec, records, number=len(records))
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if trial.state != TrialState.RUNNING or trial.last_step is None:
        return False, dict(trial.system_attrs)
    verdict = bool(study.pruner.prune(study, trial))
    after = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return verdict, dict(after.system_attrs)


def best(spec: StudySpec, records: list[TrialRecord]) -> TrialRecord | None:
    """The complete trial with the best value (the first of equals), or None."""
    done = [r for r in records if r.state == COMPLETE and r.value is not None and math.isfinite(r.value)]
    if not done:
        return None
    sign = 1 if spec.direction == "minimize" else -1
    return min(done, key=lambda r: (sign * (r.value or 0.0), r.number))


def importances(spec: StudySpec, records: list[TrialRecord]) -> dict[str, float]:
    """Which settings matter, by Optuna's PED-ANOVA evaluator (needs no scikit-learn), over the complete trials;
    empty with fewer than two of them or a single searched setting."""
    done = [r for r in records if r.state == COMPLETE and r.value is not None]
    if len(done) < 2 or len(spec.space) < 2:
        return {name: 1.0 for name in spec.space} if len(done) >= 2 else {}
    study = build_study(spec, done)
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        )
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:  # too few distinct values to say anything
        log.info("study %s: no importance yet (%s)", spec.name, exc)
        return {}
    return {name: float(value) for name, value in found.items()}
