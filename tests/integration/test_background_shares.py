"""One user flooding webhook test pings at an endpoint that never answers cannot take the background worker:
pings are capped (one in flight per webhook, a few per user, then 429), and each kind of background work has
its own share of the threads (jobs.common.shares), so a large upload's check, a sweep and another user's
delivery still complete in time, on a real Celery background worker."""

import json
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import requests

from tests.integration.stack import running_stack
from tests.local_http import local_http_server
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
DEADLINE_S = 8  # the stack's WEBHOOK_TIMEOUT_SECONDS: how long each ping to the silent endpoint holds a thread
FLOOD_S = 30
HOOKS = 8  # alice's webhooks, all pointing at the silent endpoint: as many pings in flight as the worker has threads


class Silent:
    """A TCP endpoint on 127.0.0.1 that accepts connections, reads what comes and never answers."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.lock = threading.Lock()
        self.open = self.most_open = self.connections = 0
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
                self.connections += 1
                self.most_open = max(self.most_open, self.open)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn):
        with conn:
            try:
                while conn.recv(65536):  # until the sender hangs up at its deadline
                    pass
            except OSError:
                pass
        with self.lock:
            self.open -= 1


@contextmanager
def silent_endpoint():
    endpoint = Silent()
    try:
        yield endpoint
    finally:
        endpoint.server.close()


class Receiver:
    """bob's endpoint: answers 204 at once and notes each event's type and when it came."""

    events: list[tuple[str, float]] = []

    @classmethod
    def handler(cls):
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                cls.events.append((event["type"], time.monotonic()))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_llama):
    # Sweeps every 3 s, so a lost delivery's sweep is seen within the flood. Pings in flight are capped at one
    # per webhook only: the shares alone must keep alice's eight from holding all eight threads.
    env = {"SWEEP_SECONDS": "3", "WEBHOOK_PINGS_IN_FLIGHT_PER_USER": str(HOOKS)}
    with running_stack(tmp_path_factory.mktemp("stack-shares"), tiny_llama, env=env) as s:
        yield s


def flood(stack, headers, hooks, stop: threading.Event, answers: list):
    """Ask for test pings across the webhooks as fast as the API answers, until `stop`."""
    with requests.Session() as session:
        while not stop.is_set():
            for hook in hooks:
                r = session.post(f"{stack.url}/api/v1/webhooks/{hook}/test/", headers=headers, timeout=30)
                answers.append((r.status_code, r.headers.get("Retry-After"), r.json()))


def lose_a_delivery(stack, hook: int) -> None:
    """A job event for bob whose message was lost an hour ago: only the webhook sweep sends it now."""
    stack.manage(
        "shell",
        "-c",
        "import datetime as dt; from django.utils import timezone; "
        "from jobs.webhooks.models import Webhook, WebhookDelivery as D; "
        f"d = D.objects.create(webhook=Webhook.objects.get(id={hook}), event='fine_tuning.job.succeeded', "
        "payload={'id': 'msg_lost', 'object': 'event', 'type': 'fine_tuning.job.succeeded', 'data': {}}); "
        "D.objects.filter(id=d.id).update(updated=timezone.now() - dt.timedelta(hours=1))",
    )


def upload_large(stack, headers) -> str:
    rows = [{"prompt": f"question {i} " + "word " * 20, "completion": f"answer {i}"} for i in range(600)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = requests.post(f"{stack.url}/api/v1/datasets/", headers=headers, timeout=30, files={"file": ("big.jsonl", body)})
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    return stack.url + r.headers["Location"]


def test_a_ping_flood_leaves_uploads_sweeps_and_other_users_deliveries_on_time(stack):
    alice = {"Authorization": f"Bearer {stack.api_key('alice')}"}
    bob = {"Authorization": f"Bearer {stack.api_key('bob')}"}
    with silent_endpoint() as silent, local_http_server(Receiver.handler()) as receiver:
        hooks = []
        for _ in range(HOOKS):
            r = requests.post(f"{stack.url}/api/v1/webhooks/", json={"url": silent.url}, headers=alice, timeout=30)
            assert r.status_code == 201, r.text
            hooks.append(r.json()["id"])
        r = requests.post(f"{stack.url}/api/v1/webhooks/", json={"url": receiver + "/hook"}, headers=bob, timeout=30)
        bob_hook = r.json()["id"]

        stop, answers = threading.Event(), []
        flooding = threading.Thread(target=flood, args=(stack, alice, hooks, stop, answers), daemon=True)
        flooding.start()
        started = time.monotonic()
        try:
            wait_until(lambda: silent.connections, timeout=30, what="the first ping", on_timeout=stack.logs)
            # A large upload is checked, its tokens counted, in time.
            check_url = upload_large(stack, alice)
            check = wait_until(
                lambda: requests.get(check_url, headers=alice, timeout=30).json(),
                until=lambda c: c["status"] not in ("queued", "checking"),
                timeout=45,
                interval=0.5,
                what="the large upload's check during the flood",
                on_timeout=stack.logs,
            )
            assert (check["status"], check["rows"]) == ("ready", 600), check
            # bob's test ping is delivered at once, and the sweep sends his lost event.
            sent = time.monotonic()
            r = requests.post(f"{stack.url}/api/v1/webhooks/{bob_hook}/test/", headers=bob, timeout=30)
            assert r.status_code == 202, r.text
            lose_a_delivery(stack, bob_hook)
            wait_until(
                lambda: {kind for kind, _ in Receiver.events} >= {"ping", "fine_tuning.job.succeeded"},
                timeout=30,
                interval=0.3,
                what="bob's ping and the swept event during the flood",
                on_timeout=stack.logs,
            )
            # Not behind alice's pings: they hold one thread at a time (her share of deliveries), not all of them.
            assert min(t for kind, t in Receiver.events if kind == "ping") - sent < DEADLINE_S / 2
            # Keep flooding for the rest of the time, then look at what the flood got.
            stop.wait(max(0.0, FLOOD_S - (time.monotonic() - started)))
        finally:
            stop.set()
            flooding.join(60)
        flooded_s = time.monotonic() - started

    accepted = [a for a in answers if a[0] == 202]
    capped = [a for a in answers if a[0] == 429 and a[2].get("error", {}).get("field") == "webhook"]
    assert capped and all(int(retry_after) >= 1 for _, retry_after, _ in capped), answers[:5]
    assert "still being sent" in capped[0][2]["error"]["message"]
    # Each ping holds the endpoint up to DEADLINE_S, and alice's are sent one at a time (BACKGROUND_OWNER_SHARES):
    # one per webhook was accepted, then one more each time a ping ended.
    assert silent.most_open == 1, silent.most_open
    assert len(accepted) <= HOOKS + flooded_s / DEADLINE_S + 1, (len(accepted), len(answers))
    assert len(answers) > 10 * len(accepted), (len(accepted), len(answers))
