"""The sweep's study, rebuilt from rows for every decision, decides as Optuna's own study would."""

from __future__ import annotations

import optuna
import pytest

from jobs.sweeps import study
from worker.errors import InputError

SPACE = {"learning_rate": [1e-4, 3e-3, "log"], "rank": [8, 16, 32], "n_epochs": [1, 4]}


def test_space_names_and_bounds_are_checked_against_train_config():
    space = study.parse_space(SPACE, {})
    assert space["learning_rate"] == optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)
    assert space["rank"] == optuna.distributions.CategoricalDistribution([8, 16, 32])
    assert space["epochs"] == optuna.distributions.FloatDistribution(1.0, 4.0)  # the OpenAI name, as the API takes it
    for bad, field, words in [
        ({"rank": [0, 8]}, "space.rank", "between 1 and 1024"),
        ({"rnak": [8, 16]}, "space.rnak", "not a job setting"),
        ({"learning_rate": [0.1, 0.01]}, "space.learning_rate", "low must be below high"),
        ({"rank": [8, 16.5]}, "space.rank", "whole numbers"),
        ({"lr_scheduler": ["linear", "nope", "cosine"]}, "space.lr_scheduler", "must be one of"),
        ({}, "space", "at least one"),
    ]:
        with pytest.raises(InputError) as caught:
            study.parse_space(bad, {})
        assert caught.value.field == field and words in caught.value.message, (bad, caught.value)
    with pytest.raises(InputError) as caught:
        study.parse_space({"rank": [8, 16]}, {"rank": 8})
    assert caught.value.field == "space.rank"


def test_ask_is_reproducible_and_differs_per_trial():
    spec = study.StudySpec(name="s", direction="minimize", space=study.parse_space(SPACE, {}), seed=7, trials=6)
    first = [study.ask(spec, [])]
    records = [study.TrialRecord(0, first[0], study.RUNNING)]
    second = study.ask(spec, records)
    assert study.ask(spec, []) == first[0] and study.ask(spec, records) == second and second != first[0]


def test_the_prune_decision_is_optunas_successive_halving():
    """Four trials report the same values through Optuna's own persistent study and through rows rebuilt at every
    report (the rungs kept on the rows): every verdict is the same, and some trials are pruned."""
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    spec = study.StudySpec(name="s", direction="minimize", space=space, pruner="successive_halving")
    curves = {
        0: [0.9, 0.5, 0.3, 0.2, 0.1],
        1: [1.2, 1.0, 0.9, 0.8, 0.7],
        2: [0.8, 0.4, 0.2, 0.1, 0.05],
        3: [2, 2, 2, 2, 2],
    }
    reference = optuna.create_study(direction="minimize", pruner=study.build_pruner(spec))
    records: list[study.TrialRecord] = []
    ours, theirs = {}, {}
    for number, curve in curves.items():
        trial = reference.ask({"x": space["x"]})
        record = study.TrialRecord(number, {"x": trial.params["x"]}, study.RUNNING)
        records.append(record)
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
            record.intermediate[step] = value
            pruned, record.system_attrs = study.should_prune(spec, records, number)
            assert pruned == trial.should_prune(), (number, step)
            if pruned:
                ours[number] = theirs[number] = step
                reference.tell(trial, state=optuna.trial.TrialState.PRUNED)
                record.state, record.value = study.PRUNED, value
                break
        else:
            reference.tell(trial, curve[-1])
            record.state, record.value = study.COMPLETE, curve[-1]
    assert ours and 3 in ours and 0 not in ours
    assert (
        study.best(spec, records).number
        == min((r for r in records if r.state == study.COMPLETE), key=lambda r: r.value).number
    )


def test_importance_needs_two_finished_trials_and_no_scikit_learn():
    space = study.parse_space({"learning_rate": [1e-4, 1e-2, "log"], "rank": [4, 64]}, {})
    spec = study.StudySpec(name="s", direction="minimize", space=space)
    records = [study.TrialRecord(0, {"learning_rate": 1e-3, "rank": 8}, study.COMPLETE, value=1.0)]
    assert study.importances(spec, records) == {}
    for i in range(1, 12):
        records.append(
            study.TrialRecord(i, {"learning_rate": 10 ** (-4 + i * 0.18), "rank": 4 + i * 5}, study.COMPLETE, value=i)
        )
    found = study.importances(spec, records)
    assert set(found) == {"learning_rate", "rank"}


@pytest.mark.parametrize("pruner, prunes", [("hyperband", True), ("none", False)])
def test_hyperband_and_no_pruner_decide_from_rebuilt_rows(pruner, prunes):
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    spec = study.StudySpec(name="s", direction="minimize", space=space, pruner=pruner)
    records: list[study.TrialRecord] = []
    pruned = []
    for number in range(6):
        record = study.TrialRecord(number, {"x": 0.1 * number}, study.RUNNING)
        records.append(record)
        for step in range(1, 10):
            record.intermediate[step] = 1.0 + number * 0.1 - step * 0.01  # each trial worse than the one before
            verdict, record.system_attrs = study.should_prune(spec, records, number)
            if verdict:
                record.state, record.value = study.PRUNED, record.intermediate[step]
                pruned.append(number)
                break
        else:
            record.state, record.value = study.COMPLETE, record.intermediate[9]
    assert bool(pruned) == prunes and 0 not in pruned
