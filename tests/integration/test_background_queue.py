"""Each kind of work has its own queue: a webhook endpoint that trickles its answer holds only the
background worker, for at most WEBHOOK_TIMEOUT_SECONDS, while chat on the infer worker answers at once."""

import http.server
import json
import threading
import time

import pytest
import requests

from tests.local_http import local_http_server
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
DEADLINE_S = 8  # the stack's WEBHOOK_TIMEOUT_SECONDS


class Trickling(http.server.BaseHTTPRequestHandler):
    """Reads the event, then sends its status line a byte a second, until the sender hangs up."""

    connected = threading.Event()
    hung_up = threading.Event()
    times: dict[str, float] = {}

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.times["connected"] = time.monotonic()
        self.connected.set()
        try:
            for byte in b"HTTP/1.1 200 OK\r\n" * 20:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.times["hung_up"] = time.monotonic()
        self.hung_up.set()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def trickling_endpoint():
    with local_http_server(Trickling) as url:
        yield url + "/hook"


def chat(stack, headers, timeout: float = 30) -> float:
    """Ask the base model through /v1/chat/completions (the infer worker); returns the seconds it took."""
    started = time.monotonic()
    r = requests.post(
        f"{stack.url}/v1/chat/completions",
        headers=headers,
        timeout=timeout,
        json={"model": "tiny-llama", "messages": [{"role": "user", "content": "colour 2"}], "max_tokens": 4},
    )
    assert r.status_code == 200, (r.text[:500], stack.logs())
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
    return time.monotonic() - started


# One configuration is enough: what is checked is which worker runs what, not the database or broker.
@pytest.mark.parametrize("stack", [("sqlite", "embedded")], indirect=True, ids=["sqlite+embedded-redis"])
def test_a_hanging_webhook_endpoint_never_holds_up_chat(stack, trickling_endpoint):
    headers = {"Authorization": f"Bearer {stack.api_key()}"}
    chat(stack, headers, timeout=180)  # the infer worker loads the base once, before the clock matters

    r = requests.post(f"{stack.url}/api/v1/webhooks/", json={"url": trickling_endpoint}, headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    hook = r.json()["id"]
    r = requests.post(f"{stack.url}/api/v1/webhooks/{hook}/test/", headers=headers, timeout=30)
    assert r.status_code == 202, r.text
    assert Trickling.connected.wait(30), stack.logs()

    # The delivery is stuck on the background worker; chat still answers at once.
    took = chat(stack, headers)
    assert not Trickling.hung_up.is_set(), "chat was answered only after the delivery ended"
    assert took < DEADLINE_S / 2, took

    # The attempt ends at its deadline, however slowly the endpoint trickles; a test ping has no second one.
    assert Trickling.hung_up.wait(DEADLINE_S + 10), stack.logs()
    # (the endpoint trickles for ever: ending within a few seconds of the deadline shows the deadline at work;
    # the margin is for a loaded machine, where the timer thread and the hang-up run late)
    assert Trickling.times["hung_up"] - Trickling.times["connected"] < DEADLINE_S + 5

    def delivery_of_hook() -> dict:
        (delivery,) = requests.get(
            f"{stack.url}/api/v1/webhooks/{hook}/deliveries/", headers=headers, timeout=30
        ).json()["results"]
        return delivery

    delivery = wait_until(
        delivery_of_hook,
        until=lambda d: d["last_error"],
        timeout=15,
        interval=0.3,
        what="the delivery's attempt to fail",
        on_timeout=stack.logs,
    )
    assert (delivery["status"], delivery["attempts"], delivery["response_code"], delivery["last_error"]) == (
        "failed",
        1,
        None,
        f"timeout: no complete answer within {DEADLINE_S} s",
    ), stack.logs()


@pytest.mark.parametrize("stack", [("sqlite", "embedded")], indirect=True, ids=["sqlite+embedded-redis"])
def test_a_large_upload_and_its_token_counts_are_done_by_the_background_worker(stack):
    """Over DATASET_CHECK_INLINE_BYTES (64 KB in the stack) the request only stores the file; the real
    background worker checks it, then counts its tokens once for the check page and the estimates."""
    headers = {"Authorization": f"Bearer {stack.api_key()}"}
    rows = [{"prompt": f"question {i} " + "word " * 20, "completion": f"answer {i}"} for i in range(600)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    assert len(body) > 65536
    r = requests.post(
        f"{stack.url}/api/v1/datasets/",
        headers=headers,
        timeout=30,
        files={"file": ("big.jsonl", body)},
        data={"name": "big"},
    )
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    check = wait_until(
        lambda: requests.get(stack.url + r.headers["Location"], headers=headers, timeout=30).json(),
        until=lambda c: c["status"] not in ("queued", "checking"),
        timeout=60,
        interval=0.3,
        what="the dataset check to end",
        on_timeout=stack.logs,
    )
    assert (check["status"], check["rows"]) == ("ready", 600), check
    tokens_url = f"{stack.url}/api/v1/datasets/{check['dataset']}/tokens/?max_length=16"
    tokens = wait_until(
        lambda: requests.get(tokens_url, headers=headers, timeout=30).json(),
        until=lambda t: t["status"] != "pending",
        timeout=60,
        interval=0.3,
        what="the token counts",
        on_timeout=stack.logs,
    )
    assert tokens["status"] == "ready" and len(tokens["lengths"]) == 600 and tokens["truncated"] == 600, tokens
