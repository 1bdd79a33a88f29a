"""Behind reverse proxies the log-in lockout counts failures by (username, the client's own address), taken
from X-Forwarded-For only as far as TRUSTED_PROXY_COUNT proxies vouch for it: a stranger cannot lock a user
out, and a client cannot dodge the lockout by writing the header itself."""

import pytest

from jobs.common.client_address import forwarded_client

PROXY = "10.0.0.9"  # the one TLS proxy in front of the web server: every request comes from it
ALICE_HOME = "198.51.100.7"
STRANGER = "203.0.113.5"


def sign_in(client, username, password, *, forwarded_for=None, remote=PROXY):
    headers = {"HTTP_X_FORWARDED_FOR": forwarded_for} if forwarded_for is not None else {}
    return client.post("/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=remote, **headers)


@pytest.mark.parametrize(
    "remote, header, proxies, expected",
    [
        (PROXY, STRANGER, 0, PROXY),  # no proxy trusted: the header is anyone's to write
        (PROXY, STRANGER, 1, STRANGER),
        (
            PROXY,
            f"{ALICE_HOME}, {STRANGER}",
            1,
            STRANGER,
        ),  # the client's own entry, left of the proxy's, is not trusted
        (PROXY, f"{ALICE_HOME}, {STRANGER}, 10.0.0.8", 2, STRANGER),  # two proxies: the outer one saw the client
        ("192.0.2.1", None, 1, "192.0.2.1"),  # came around the proxy: no header
        (PROXY, STRANGER, 2, PROXY),  # fewer entries than proxies
        (PROXY, "not-an-address", 1, PROXY),
        (PROXY, " 2001:db8::1 ", 1, "2001:db8::1"),
    ],
)
def test_the_client_address_is_what_the_trusted_proxies_saw(remote, header, proxies, expected):
    assert forwarded_client(remote, header, proxies) == expected


def test_behind_a_proxy_a_stranger_cannot_lock_a_user_out(user, client, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    for _ in range(5):
        # The stranger even claims alice's address: the proxy appends the one it really saw.
        response = sign_in(client, "alice", "wrong", forwarded_for=f"{ALICE_HOME}, {STRANGER}")
    assert response.status_code == 429 and "Too many failed sign-ins" in response.content.decode()
    assert sign_in(client, "alice", "pw-alice-123", forwarded_for=STRANGER).status_code == 429
    # alice, through the same proxy from her own address, signs in.
    assert sign_in(client, "alice", "pw-alice-123", forwarded_for=ALICE_HOME).status_code == 302


def test_without_trusted_proxies_the_header_neither_locks_nor_frees(user, client, settings):
    assert settings.TRUSTED_PROXY_COUNT == 0
    for i in range(5):
        sign_in(client, "alice", "wrong", remote=STRANGER, forwarded_for=f"192.0.2.{i}")
    # The failures counted against the connection's address, whatever the header said.
    assert sign_in(client, "alice", "pw-alice-123", remote=STRANGER, forwarded_for=ALICE_HOME).status_code == 429
    assert sign_in(client, "alice", "pw-alice-123", remote=ALICE_HOME).status_code == 302
