import json
import os
from pathlib import Path

import pytest

from tests.tiny_model import build_tiny_model

# Tiny models gain nothing from threads, and two busy processes on 2 cores thrash with them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


def memorisable_conversations(n: int = 8) -> list[list[dict]]:
    return [[{"role": "user", "content": f"colour {i}"},
             {"role": "assistant", "content": f'{{"answer": "{["red", "green", "blue"][i % 3]}"}}'}]
            for i in range(n)]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in memorisable_conversations()])


@pytest.fixture(autouse=True)
def _media_root(request, tmp_path):
    """A temporary MEDIA_ROOT per Django test."""
    if "settings" not in request.fixturenames and not request.node.get_closest_marker("django_db"):
        yield
        return
    settings = request.getfixturevalue("settings")
    settings.MEDIA_ROOT = tmp_path / "media"
    yield
