"""With USER_MODELS=1 a user's model is untrusted input to the shared workers: a GGUF whose header declares a
515-billion parameter model in a few hundred bytes, and one whose chat template loops for ever, are refused with
their reasons by the real background worker, which goes on converting the next upload, while chat still answers."""

import shutil

import pytest
import requests

from tests.base_models.tiny_gguf import write_lying_gguf, write_tiny_gguf
from tests.integration.stack import running_stack
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
SLOW_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages }}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_llama):
    with running_stack(tmp_path_factory.mktemp("stack-user-models"), tiny_llama, env={"USER_MODELS": "1"}) as s:
        yield s


def add_gguf(stack, headers, path) -> dict:
    with open(path, "rb") as f:
        r = requests.post(
            f"{stack.url}/api/v1/base-models/",
            headers=headers,
            timeout=30,
            files={"file": (path.name, f)},
            data={"source": "gguf"},
        )
    assert r.status_code == 202, r.text
    return wait_until(
        lambda: requests.get(f"{stack.url}/api/v1/base-models/{r.json()['id']}/", headers=headers, timeout=30).json(),
        until=lambda m: m["status"] in ("ready", "failed"),
        timeout=180,
        interval=0.5,
        what=f"the conversion of {path.name} to end",
        on_timeout=stack.logs,
    )


def chat(stack, headers) -> None:
    r = requests.post(
        f"{stack.url}/v1/chat/completions",
        headers=headers,
        timeout=180,
        json={"model": "tiny-llama", "messages": [{"role": "user", "content": "colour 2"}], "max_tokens": 4},
    )
    assert r.status_code == 200, (r.text[:500], stack.logs())


def test_a_lying_gguf_and_a_slow_template_are_refused_and_the_workers_keep_answering(stack, tiny_llama, tmp_path):
    headers = {"Authorization": f"Bearer {stack.api_key()}"}
    lying = add_gguf(stack, headers, write_lying_gguf(tmp_path / "huge.gguf"))
    assert lying["status"] == "failed"
    assert lying["error"].startswith("the GGUF file declares 1918.52 GB of weights but holds only "), lying

    folder = shutil.copytree(tiny_llama, tmp_path / "slow-template")
    (folder / "chat_template.jinja").write_text(SLOW_TEMPLATE)
    slow = add_gguf(stack, headers, write_tiny_gguf(folder, tmp_path / "slow.gguf"))
    assert slow["status"] == "failed"
    assert slow["error"].startswith("the model's chat template is refused: the chat template runs more than"), slow

    # The same background worker process converts the next upload; the chat worker answers.
    background = stack.process("background")
    good = add_gguf(stack, headers, write_tiny_gguf(tiny_llama, tmp_path / "good.gguf"))
    assert good["status"] == "ready", good
    assert background.poll() is None and stack.process("background") is background
    chat(stack, headers)
