"""The job page opens with its result in plain words: one sentence and the numbers that matter (base vs adapted),
the engineer's figures and the settings folded below, and only the settings that apply to the job."""

import json

import pytest

from jobs.common.human_units import duration_words, size_words
from jobs.training.files import job_output_dir
from jobs.training.models import FineTuneJob, JobEvent, JobStatus, MetricPoint
from jobs.training.summary import job_summary, setting_applies, training_sentence
from worker.config import TrainConfig
from worker.result_words import percent_words


def answers_evaluation(exact=(0.0, 0.875), valid_json=(0.4, 1.0), same_keys=(0.2, 0.875)) -> dict:
    def side(i):
        return {"exact": exact[i], "valid_json": valid_json[i], "same_keys": same_keys[i]}

    return {
        "examples": 8,
        "loss": {"base": 2.31, "adapter": 0.42},
        "perplexity": {"base": 10.1, "adapter": 1.5},
        "rates": {"base": side(0), "adapter": side(1)},
        "rows": [],
    }


def summary_of(evaluation, **kw):
    return job_summary(
        evaluation=evaluation, **{"steps": 120, "seconds": 130, "first_loss": 2.1, "last_loss": 0.4, **kw}
    )


def test_a_json_job_says_how_often_each_side_answers_right_and_in_json():
    summary = summary_of(answers_evaluation())
    assert summary.sentence == (
        "The adapted model answers exactly as your data does 88 % of the time; the base model 0 %. "
        "100 % of its answers are valid JSON."
    )
    assert [(n.label, n.hint, n.base, n.adapted) for n in summary.numbers] == [
        ("Answers exactly as in your data", "exact match", "0 %", "88 %"),
        ("Answers that are valid JSON", "valid JSON", "40 %", "100 %"),
        ("JSON with the expected keys", "same JSON keys", "20 %", "88 %"),
    ]


def test_a_plain_text_job_shows_exact_match_and_the_held_out_error():
    summary = summary_of(answers_evaluation(valid_json=(None, None), same_keys=(None, None)))
    assert (
        summary.sentence == "The adapted model answers exactly as your data does 88 % of the time; the base model 0 %."
    )
    assert [(n.hint, n.base, n.adapted) for n in summary.numbers] == [
        ("exact match", "0 %", "88 %"),
        ("validation loss", "2.31", "0.42"),
    ]


def test_without_answers_the_loss_speaks_and_a_preference_job_its_accuracy():
    only_loss = summary_of(answers_evaluation(exact=(None, None), valid_json=(None, None), same_keys=(None, None)))
    assert only_loss.sentence == (
        "On 8 held-out examples the adapted model's error is 0.42, the base model's 2.31 (lower is better)."
    )
    assert [n.hint for n in only_loss.numbers] == ["validation loss"]
    preference = {
        "kind": "preference",
        "method": "dpo",
        "examples": 10,
        "accuracy": {"base": 0.5, "adapter": 0.9},
        "loss": {"base": 0.693, "adapter": 0.31},
    }
    summary = summary_of(preference)
    assert (
        summary.sentence
        == "The adapted model prefers the chosen answer in 90 % of 10 held-out pairs; the base model in 50 %."
    )
    assert [(n.hint, n.base, n.adapted) for n in summary.numbers] == [
        ("preference accuracy", "50 %", "90 %"),
        ("DPO validation loss", "0.69", "0.31"),
    ]


def test_a_job_without_evaluation_says_what_happened():
    assert summary_of(None).sentence == "Trained 120 steps in 2 min 10 s; the loss fell from 2.1 to 0.4."
    assert summary_of(None).numbers == []
    assert training_sentence(steps=1, seconds=4, first_loss=1.0, last_loss=1.0) == "Trained 1 step in 4 s."
    assert training_sentence(steps=5, seconds=61, first_loss=0.3, last_loss=0.5) == (
        "Trained 5 steps in 1 min 1 s; the loss rose from 0.3 to 0.5."
    )
    assert training_sentence(steps=5, seconds=3600, first_loss=None, last_loss=None) == "Trained 5 steps in 1 h."


def test_human_units():
    assert size_words(14566388) == "13.9 MB" and size_words(21474836480) == "20 GB"
    assert size_words(0) == "0 bytes" and size_words(512) == "512 bytes" and size_words(1536) == "1.5 KB"
    assert duration_words(78) == "1 min 18 s" and duration_words(43200) == "12 h" and duration_words(0) == "0 s"
    assert duration_words(3900) == "1 h 5 min" and duration_words(59.6) == "1 min"
    assert percent_words(0.875) == "88 %" and percent_words(None) == "–"


@pytest.mark.parametrize(
    ("name", "config", "device", "shown"),
    [
        ("beta", {"method": "supervised"}, "cpu", False),
        ("beta", {"method": "dpo"}, "cpu", True),
        ("beta", {"method": "orpo"}, None, True),
        ("liger", {"liger": False}, "cpu", False),
        ("liger", {"liger": False}, None, False),
        ("liger", {"liger": False}, "cuda", True),
        ("liger", {"liger": True}, None, True),
        ("qlora", {"qlora": False}, "cpu", False),
        ("qlora", {"qlora": True}, "cuda", True),
        ("sharding", {"devices": 1, "sharding": "none"}, "cuda", False),
        ("sharding", {"devices": 2, "sharding": "fsdp"}, "cuda", True),
        ("target_modules", {"target_preset": "attention", "target_modules": []}, "cpu", False),
        ("target_modules", {"target_preset": "custom", "target_modules": ["q_proj"]}, "cpu", True),
        ("early_stopping_threshold", {"early_stopping_patience": 0}, "cpu", False),
        ("early_stopping_threshold", {"early_stopping_patience": 3}, "cpu", True),
        ("start_from", {"start_from": ""}, "cpu", False),
        ("modules_to_save", {"modules_to_save": []}, "cpu", False),
        ("max_steps", {"max_steps": 0}, "cpu", False),
        ("max_steps", {"max_steps": 50}, "cpu", True),
        ("rank", {"rank": 8}, "cpu", True),
        ("learning_rate", {"learning_rate": 2e-4}, None, True),
    ],
)
def test_which_settings_apply(name, config, device, shown):
    assert setting_applies(name, config, device) is shown


def finished_job(user, base_model, dataset, evaluation=None, **config) -> FineTuneJob:
    job = FineTuneJob.objects.create(
        owner=user,
        base_model=base_model,
        dataset=dataset,
        config=TrainConfig(**config).to_dict(),
        status=JobStatus.SUCCEEDED,
        step=8,
        total_steps=8,
        run_seconds=78,
        final_loss=0.4,
        validation={"kind": "split", "percent": 25, "seed": 1, "train_rows": 6, "eval_rows": 2} if evaluation else {},
    )
    JobEvent.objects.create(job=job, kind="setup", message="loading tokenizer and data on cpu")
    MetricPoint.objects.create(job=job, step=1, epoch=0.1, train_loss=2.1)
    MetricPoint.objects.create(job=job, step=8, epoch=1.0, train_loss=0.4)
    if evaluation is not None:
        job_output_dir(job).mkdir(parents=True, exist_ok=True)
        job_output_dir(job).joinpath("evaluation.json").write_text(json.dumps(evaluation))
    return job


def test_the_job_page_leads_with_the_sentence_and_folds_the_rest(client_in, user, base_model, dataset):
    job = finished_job(user, base_model, dataset, answers_evaluation())
    html = client_in.get(f"/jobs/{job.id}/").content.decode()
    sentence = html.index('id="summary-sentence"')
    assert "answers exactly as your data does 88 % of the time; the base model 0 %" in html
    assert sentence < html.index('id="stat-step"') < html.index('id="evaluation"'), "the result comes first"
    engineer = html[html.index('<details class="engineer" id="engineer-metrics">') :].split("</details>")[0]
    assert all(f'id="stat-{s}"' in engineer for s in ("mfu", "lr", "grad", "tps", "mem")), "engineer figures folded"
    assert '<details id="all-settings"><summary>All settings</summary>' in html  # closed
    settings = html[html.index('id="all-settings"') :].split("</details>")[0]
    assert '<th title="rank">' in settings and '<th title="learning_rate">' in settings
    for not_applying in ("beta", "liger", "qlora", "sharding", "target_modules", "early_stopping_threshold"):
        assert f'<th title="{not_applying}">' not in settings, not_applying
    assert "Beta (DPO)" not in html and "Liger kernels (CUDA)" not in html


def test_a_job_without_evaluation_says_how_its_training_went(client_in, user, base_model, dataset):
    job = finished_job(user, base_model, dataset, method="supervised")
    html = client_in.get(f"/jobs/{job.id}/").content.decode()
    assert "Trained 8 steps in 1 min 18 s; the loss fell from 2.1 to 0.4." in html
    assert 'id="headline-numbers"' not in html
    running = FineTuneJob.objects.create(
        owner=user, base_model=base_model, dataset=dataset, config=job.config, status=JobStatus.RUNNING
    )
    assert 'id="summary-sentence"' not in client_in.get(f"/jobs/{running.id}/").content.decode()


def test_the_model_card_leads_with_the_same_sentence():
    from worker.evaluation import summary_markdown

    card = summary_markdown({**answers_evaluation(), "rows": [{}] * 8})
    first, table = card.split("\n\n", 1)
    assert first == summary_of(answers_evaluation()).sentence
    assert table.startswith("| | base | adapted |") and "| exact match (8 held-out prompts) | 0 % | 88 % |" in table


def test_a_reinforcement_job_says_what_the_grader_scored():
    evaluation = {"kind": "reward", "prompts": 20, "reward": {"base": 0.31, "adapter": 0.87}, "rows": []}
    summary = summary_of(evaluation)
    assert summary.sentence == (
        "On 20 held-out prompts your grader scores the adapted model's answers 0.87 on average; "
        "the start model's 0.31 (higher is better)."
    )
    assert [(n.label, n.base, n.adapted) for n in summary.numbers] == [
        ("Grader's score of the answers (higher is better)", "0.31", "0.87")
    ]
    without = job_summary(evaluation=None, steps=40, seconds=90, first_reward=0.05, last_reward=0.92)
    assert without.sentence == (
        "Trained 40 steps in 1 min 30 s; your grader's mean score of the tried answers went from 0.05 to 0.92 "
        "(higher is better)."
    )
