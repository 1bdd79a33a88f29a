"""Sign-in and sign-up on a shared server: lockout of repeated failures (django-axes), ALLOW_SIGNUP,
Django's full password validators, and the per-user throttle of session requests to /api/v1/."""

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.test import APIClient

from tests.factories import bearer_client


def sign_in(client, username, password, ip="10.0.0.1"):
    return client.post("/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_five_failures_lock_that_username_from_that_address_with_a_clear_message(user, client, settings):
    assert settings.AXES_FAILURE_LIMIT == 5 and settings.AXES_COOLOFF_TIME == dt.timedelta(minutes=15)
    for _ in range(4):
        response = sign_in(client, "alice", "wrong")
        assert response.status_code == 200 and "Please enter a correct username" in response.content.decode()
    response = sign_in(client, "alice", "wrong")
    assert response.status_code == 429
    page = response.content.decode()
    assert "Too many failed sign-ins" in page and "15 minutes" in page and 'name="username"' in page
    # Locked even with the right password, until the cool-off ends.
    assert sign_in(client, "alice", "pw-alice-123").status_code == 429
    assert "_auth_user_id" not in client.session
    # Only that pair is locked: the same user from another address, another user from this one.
    assert sign_in(client, "alice", "pw-alice-123", ip="10.0.0.2").status_code == 302
    client.logout()
    get_user_model().objects.create_user("carol", password="pw-carol-123")
    assert sign_in(client, "carol", "pw-carol-123").status_code == 302


def test_the_lockout_ends_after_the_cool_off(user, client):
    from axes.models import AccessAttempt

    for _ in range(5):
        sign_in(client, "alice", "wrong")
    assert sign_in(client, "alice", "pw-alice-123").status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - dt.timedelta(minutes=16))
    assert sign_in(client, "alice", "pw-alice-123").status_code == 302


def test_a_success_resets_the_failure_count(user, client):
    for _ in range(4):
        sign_in(client, "alice", "wrong")
    assert sign_in(client, "alice", "pw-alice-123").status_code == 302
    client.logout()
    for _ in range(4):
        assert sign_in(client, "alice", "wrong").status_code == 200


def test_each_test_starts_without_failures(user, client):
    # After the lockouts above, alice from 10.0.0.1 signs in: the attempts live in the test's database.
    assert sign_in(client, "alice", "pw-alice-123").status_code == 302


def test_signup_is_on_by_default_and_linked_from_the_login_page(client, db):
    assert "/accounts/signup/" in client.get("/accounts/login/").content.decode()
    assert client.get("/accounts/signup/").status_code == 200
    response = client.post(
        "/accounts/signup/", {"username": "dora", "password1": "violet-harbour-72", "password2": "violet-harbour-72"}
    )
    assert response.status_code == 302 and get_user_model().objects.filter(username="dora").exists()


def test_without_allow_signup_the_page_and_link_are_gone_and_posts_are_refused(client, db, settings):
    settings.ALLOW_SIGNUP = False
    login_page = client.get("/accounts/login/").content.decode()
    assert "/accounts/signup/" not in login_page and "created by its administrator" in login_page
    page = client.get("/accounts/signup/")
    assert page.status_code == 404 and "Sign-up is turned off" in page.content.decode()
    response = client.post(
        "/accounts/signup/", {"username": "dora", "password1": "violet-harbour-72", "password2": "violet-harbour-72"}
    )
    assert response.status_code == 404 and not get_user_model().objects.filter(username="dora").exists()


@pytest.mark.parametrize(
    "password, message",
    [
        ("short1!", "too short"),
        ("password123", "too common"),
        ("80418529304", "entirely numeric"),
        ("dora.explorer", "too similar to the username"),
    ],
)
def test_signup_applies_all_of_djangos_password_validators(client, db, password, message):
    response = client.post(
        "/accounts/signup/", {"username": "dora.explorer", "password1": password, "password2": password}
    )
    assert response.status_code == 200 and message in response.content.decode()
    assert not get_user_model().objects.filter(username="dora.explorer").exists()


def test_session_requests_are_throttled_per_user(user, other_user, settings):
    settings.SESSION_THROTTLE_RATE = "2/min"
    alice = APIClient(enforce_csrf_checks=True)
    alice.force_login(user)
    assert [alice.get("/api/v1/jobs/").status_code for _ in range(3)] == [200, 200, 429]
    assert alice.get("/api/v1/jobs/").headers["Retry-After"]
    # Per user: bob's session has its own count, and alice's API key is counted by the key throttle.
    bob = APIClient(enforce_csrf_checks=True)
    bob.force_login(other_user)
    assert bob.get("/api/v1/jobs/").status_code == 200
    assert bearer_client(user).get("/api/v1/jobs/").status_code == 200
