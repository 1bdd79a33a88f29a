"""The background worker's threads are shared out by kind of work (jobs.common.shares): a task whose kind's
share, or its owner's, is full goes back to the broker at once (its thread is free) instead of running."""

import re
import threading
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings as django_settings

from jobs.common import shares
from jobs.common.shares import DELIVERIES, KIND_OF_TASK, SHARES, SharedTask, owner_share, shares_refusal
from webapp import settings as webapp_settings
from webapp.celery import app

ROOT = Path(__file__).resolve().parents[2]
ran: list[str] = []
release = threading.Event()
started = threading.Event()


@app.task(name="tests.shares.hold", bind=True)
def hold(self, who: str, owner_id: int | None = None) -> str:
    """Holds its place until `release` is set (a delivery to an endpoint that never answers)."""
    with owner_share(DELIVERIES, owner_id):
        ran.append(who)
        started.set()
        assert release.wait(10)
        return "done"


@app.task(name="tests.shares.quick")
def quick(who: str) -> str:
    ran.append(who)
    return "done"


@app.task(name="tests.shares.quick_delivery")
def quick_delivery(who: str, owner_id: int) -> str:
    with owner_share(DELIVERIES, owner_id):
        ran.append(who)
    return "done"


@pytest.fixture(autouse=True)
def fresh(settings):
    settings.BACKGROUND_SHARES = {"checks": 1, "exports": 1, "deliveries": 1, "sweeps": 1}
    settings.BACKGROUND_OWNER_SHARES = {"deliveries": 1}
    settings.BACKGROUND_DEFER_SECONDS = 2
    ran.clear()
    release.clear()
    started.clear()
    kinds = {hold.name: DELIVERIES, quick.name: "sweeps", "tests.shares.quick_delivery": DELIVERIES}
    with mock.patch.dict(KIND_OF_TASK, kinds), mock.patch("celery.canvas.Signature.apply_async") as resend:
        yield resend
    release.set()


def as_worker(task, *args, retries: int = 0):
    """Call the task as a worker thread does: a request that is not eager, with its message's details."""
    task.push_request(args=args, kwargs={}, is_eager=False, id="t-1", retries=retries, delivery_info={})
    try:
        return task(*args)
    finally:
        task.pop_request()


def in_a_thread(task, *args) -> threading.Thread:
    thread = threading.Thread(target=as_worker, args=(task, *args), daemon=True)
    thread.start()
    assert started.wait(5)
    return thread


def test_every_task_is_a_shared_task():
    from jobs.datasets.tasks import check_upload
    from jobs.webhooks.tasks import webhook_deliver

    assert all(isinstance(task, SharedTask) for task in (hold, webhook_deliver, check_upload))


def test_a_full_share_sends_the_task_back_without_running_it(fresh):
    first = in_a_thread(hold, "first")
    assert as_worker(hold, "second", retries=3) == "deferred"  # returned at once: the thread is free
    assert ran == ["first"]
    fresh.assert_called_once_with()  # the same message sent again (its countdown: the test below)
    # Another kind has its own share: it runs while deliveries are full.
    assert as_worker(quick, "sweep") == "done" and ran == ["first", "sweep"]
    release.set()
    first.join(5)
    assert SHARES.running((DELIVERIES,)) == 0
    assert as_worker(hold, "third") == "done" and ran == ["first", "sweep", "third"]


def test_the_deferred_message_keeps_its_retry_count_and_waits_the_countdown():
    first = in_a_thread(hold, "first")
    with mock.patch.object(hold, "signature_from_request", wraps=hold.signature_from_request) as build:
        assert as_worker(hold, "second", retries=3) == "deferred"
    assert build.call_args.kwargs == {"countdown": 2, "retries": 3}
    release.set()
    first.join(5)


def test_one_owner_cannot_take_the_whole_share(settings):
    settings.BACKGROUND_SHARES = {**settings.BACKGROUND_SHARES, DELIVERIES: 3}
    first = in_a_thread(hold, "alice-1", 7)
    assert as_worker(hold, "alice-2", 7) == "deferred"
    assert SHARES.running((DELIVERIES, 7)) == 1 and SHARES.running((DELIVERIES,)) == 1  # both given back
    started.clear()
    second = in_a_thread(hold, "bob-1", 8)
    assert ran == ["alice-1", "bob-1"]
    release.set()
    first.join(5)
    second.join(5)
    assert SHARES.running((DELIVERIES, 7)) == SHARES.running((DELIVERIES,)) == 0


def test_eager_mode_runs_everything_at_once():
    first = in_a_thread(hold, "first", 7)  # holds the deliveries share and owner 7's place
    assert as_worker(quick_delivery, "worker", 7) == "deferred"
    assert quick_delivery.apply(args=("eager", 7)).get() == "done"  # CELERY_TASK_ALWAYS_EAGER's way
    assert ran == ["first", "eager"]
    release.set()
    first.join(5)


def test_every_background_task_has_a_kind_and_the_threads_fit_the_shares(settings):
    settings.BACKGROUND_SHARES = webapp_settings.BACKGROUND_SHARES  # the defaults, not the fixture's
    background = {name for name, route in django_settings.CELERY_TASK_ROUTES.items() if route["queue"] == "background"}
    assert background == {name for name in shares.KIND_OF_TASK if not name.startswith("tests.")}
    needed = sum(webapp_settings.BACKGROUND_SHARES.values())
    for path in ("Procfile", "docker-compose.yml"):
        (threads,) = re.findall(r"-Q background -c (\d+) --pool threads", (ROOT / path).read_text())
        assert int(threads) == needed, path
    assert shares_refusal(needed) is None
    assert shares_refusal(4) == (
        f"the background worker runs 4 threads but BACKGROUND_SHARES add up to {needed}: start it with -c "
        f"{needed}, or a busy kind of work can take the threads another kind needs"
    )


def test_a_delivery_whose_owner_share_is_full_is_deferred_unsent(user):
    from jobs.webhooks.models import WebhookDelivery
    from jobs.webhooks.services import webhook_create
    from jobs.webhooks.tasks import webhook_deliver

    hook = webhook_create(owner=user, url="https://example.com/hook")
    delivery = WebhookDelivery.objects.create(webhook=hook, event="fine_tuning.job.failed", payload={"id": "m"})
    assert SHARES.take((DELIVERIES, user.id), 1)
    try:
        with mock.patch("jobs.webhooks.tasks.webhook_post") as post:
            assert as_worker(webhook_deliver, str(delivery.id)) == "deferred"
        post.assert_not_called()
    finally:
        SHARES.release((DELIVERIES, user.id))
    delivery.refresh_from_db()
    assert delivery.attempts == 0  # not counted as an attempt


@app.task(name="tests.shares.hold_sweep", bind=True)
def hold_sweep(self, who: str) -> str:
    """A sweep that holds its thread until `release` is set."""
    ran.append(who)
    started.set()
    assert release.wait(10)
    return "done"


def test_a_sweep_tick_that_finds_the_same_sweep_running_is_dropped_not_sent_again(fresh):
    """Sweeps never wait in the broker with a countdown (unacknowledged messages are what kombu's reconnect
    trips over), and a pile of ticks runs each sweep once; a different sweep runs alongside."""
    with mock.patch.dict(KIND_OF_TASK, {hold_sweep.name: shares.SWEEPS}):
        first = in_a_thread(hold_sweep, "sweep-a")
        assert as_worker(hold_sweep, "sweep-a again") == "skipped"
        fresh.assert_not_called()  # dropped: nothing sent back to the broker
        assert as_worker(quick, "another sweep") == "done"
        assert ran == ["sweep-a", "another sweep"]
        release.set()
        first.join(5)
        assert SHARES.running((shares.SWEEPS, hold_sweep.name)) == 0
        started.clear()
        release.clear()
        again = in_a_thread(hold_sweep, "sweep-a next tick")
        release.set()
        again.join(5)
    assert ran[-1] == "sweep-a next tick"
