"""Creating a job never holds its dataset whole in the web process: the data snapshot is copied example by
example (no parse), the split taken from the stored row count, the same split `split_examples` makes."""

from __future__ import annotations

import json
import tracemalloc
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.common import blobs, queue
from jobs.datasets import services as dataset_services
from jobs.training import services as job_services
from jobs.training.files import job_output_dir
from jobs.training.plan import job_plan
from worker.config import TrainConfig
from worker.data import normalized
from worker.data.normalized import read_normalized_jsonl
from worker.splits import split_examples


def chat_rows(n: int, width: int = 1) -> bytes:
    rows = (
        {"messages": [{"role": "user", "content": f"question {i} " * width}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(n)
    )
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def no_tasks():
    with mock.patch.object(queue, "enqueue"), mock.patch("jobs.training.tasks.job_run.delay"):
        yield


def create(user, base_model, dataset, **validation):
    plan = job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(), **validation)
    return job_services.job_create(plan=plan)


def test_the_snapshot_split_is_split_examples_without_reading_the_dataset(user, base_model, no_tasks):
    dataset = dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("c.jsonl", chat_rows(37)))
    examples = read_normalized_jsonl(blobs.fetch(dataset.normalized_file))
    train, valid = split_examples(examples, 20, 5)  # the oracle: the whole list split in memory
    with mock.patch.object(normalized, "parse_jsonl", side_effect=AssertionError("parsed during job create")):
        job = create(user, base_model, dataset, validation="split", validation_percent=20, validation_seed=5)
    data = job_output_dir(job) / "data"
    assert [e.to_json() for e in read_normalized_jsonl(data / "train.jsonl")] == [e.to_json() for e in train]
    assert [e.to_json() for e in read_normalized_jsonl(data / "eval.jsonl")] == [e.to_json() for e in valid]
    assert job.validation["train_rows"] == len(train) == 30 and job.validation["eval_rows"] == len(valid) == 7


def test_no_split_and_a_validation_dataset_are_copied_whole(user, base_model, no_tasks):
    dataset = dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("c.jsonl", chat_rows(5)))
    other = dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("v.jsonl", chat_rows(3, 2)))
    plain = create(user, base_model, dataset)
    assert not (job_output_dir(plain) / "data" / "eval.jsonl").exists()
    assert (job_output_dir(plain) / "data" / "train.jsonl").read_bytes() == blobs.fetch(
        dataset.normalized_file
    ).read_bytes()
    checked = create(user, base_model, dataset, validation_dataset=other)
    eval_file = job_output_dir(checked) / "data" / "eval.jsonl"
    assert eval_file.read_bytes() == blobs.fetch(other.normalized_file).read_bytes()
    assert checked.validation["train_rows"] == 5 and checked.validation["eval_rows"] == 3


def test_job_create_memory_does_not_grow_with_the_dataset(user, base_model, no_tasks, settings):
    settings.DATASET_CHECK_INLINE_BYTES = 64  # its tokens would be counted by a worker (not sent here)
    data = chat_rows(20_000, width=20)  # about 6 MB
    dataset = dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("big.jsonl", data))
    plan = job_plan(
        owner=user,
        dataset=dataset,
        base_model=base_model,
        config=TrainConfig(),
        validation="split",
        validation_percent=1,
        validation_seed=2,
    )
    tracemalloc.start()
    try:
        job = job_services.job_create(plan=plan)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert job.validation["train_rows"] + job.validation["eval_rows"] == 20_000
    assert peak < 1_500_000, peak  # the file is ~6 MB; its examples as objects many times that
