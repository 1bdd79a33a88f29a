"""jobs.common.outbound: which addresses are public, how odd IPv4 spellings read, the allow-list, and a
connection that goes to the vetted address only. Nothing here opens a socket to an inside address."""

import ipaddress
import socket
from unittest import mock

import pytest
from django.core.exceptions import ImproperlyConfigured

from jobs.common import outbound
from jobs.common.outbound import (
    REFUSED_LINK_LOCAL,
    REFUSED_LOOPBACK,
    REFUSED_MULTICAST,
    REFUSED_PORT,
    REFUSED_PRIVATE,
    REFUSED_RESERVED,
    REFUSED_UNSPECIFIED,
    OutboundPolicy,
    OutboundRefused,
    address_refusal,
    failure_category,
    ip_literal,
    ipv4_literal,
    outbound_connection,
    registration_refusal,
)
from webapp.env import env_hosts, env_port_ranges

DEFAULT = OutboundPolicy()


@pytest.mark.parametrize(
    "address, category",
    [
        ("127.0.0.1", REFUSED_LOOPBACK),
        ("127.255.1.2", REFUSED_LOOPBACK),
        ("::1", REFUSED_LOOPBACK),
        ("10.0.0.5", REFUSED_PRIVATE),
        ("172.16.0.1", REFUSED_PRIVATE),
        ("172.31.255.254", REFUSED_PRIVATE),
        ("192.168.1.1", REFUSED_PRIVATE),
        ("100.64.0.1", REFUSED_PRIVATE),
        ("fd12:3456::1", REFUSED_PRIVATE),
        ("fc00::1", REFUSED_PRIVATE),
        ("64:ff9b:1::a00:1", REFUSED_PRIVATE),
        ("169.254.169.254", REFUSED_LINK_LOCAL),
        ("fe80::1", REFUSED_LINK_LOCAL),
        ("fe80::1%eth0", REFUSED_LINK_LOCAL),
        ("224.0.0.1", REFUSED_MULTICAST),
        ("239.255.255.250", REFUSED_MULTICAST),
        ("ff02::1", REFUSED_MULTICAST),
        ("0.0.0.0", REFUSED_UNSPECIFIED),
        ("0.1.2.3", REFUSED_UNSPECIFIED),
        ("::", REFUSED_UNSPECIFIED),
        ("255.255.255.255", REFUSED_RESERVED),
        ("240.0.0.1", REFUSED_RESERVED),
        ("192.0.2.1", REFUSED_RESERVED),
        ("198.51.100.7", REFUSED_RESERVED),
        ("203.0.113.9", REFUSED_RESERVED),
        ("198.18.0.1", REFUSED_RESERVED),
        ("192.0.0.8", REFUSED_RESERVED),
        ("192.88.99.1", REFUSED_RESERVED),
        ("2001:db8::1", REFUSED_RESERVED),
        ("3fff::1", REFUSED_RESERVED),
        ("100::1", REFUSED_RESERVED),
        ("2001::1", REFUSED_RESERVED),
        # IPv6 spellings of IPv4 addresses are judged by the IPv4 address inside.
        ("::ffff:127.0.0.1", REFUSED_LOOPBACK),
        ("::ffff:a9fe:a9fe", REFUSED_LINK_LOCAL),
        ("::ffff:10.0.0.1", REFUSED_PRIVATE),
        ("::127.0.0.1", REFUSED_LOOPBACK),
        ("::10.0.0.1", REFUSED_PRIVATE),
        ("2002:7f00:1::", REFUSED_LOOPBACK),
        ("2002:a9fe:a9fe::1", REFUSED_LINK_LOCAL),
        ("64:ff9b::127.0.0.1", REFUSED_LOOPBACK),
        ("64:ff9b::a9fe:a9fe", REFUSED_LINK_LOCAL),
        # deprecated forms of public addresses: refused too, nobody needs them for a webhook
        ("::8.8.8.8", REFUSED_RESERVED),
        ("2002:808:808::1", REFUSED_RESERVED),
        ("5f00::1", REFUSED_RESERVED),
    ],
)
def test_non_public_addresses_are_refused_with_their_category(address, category):
    assert address_refusal(ipaddress.ip_address(address)) == category


@pytest.mark.parametrize(
    "address",
    [
        "93.184.215.14",
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",
        "100.128.0.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
    ],
)
def test_public_addresses_pass(address):
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "spelling, address",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0X7F.0.0.0x1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("10.1", "10.0.0.1"),
        ("169.254.43518", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("127.0.0.1.", "127.0.0.1"),
        ("00000000000000177.0.0.1", "127.0.0.1"),
    ],
)
def test_odd_ipv4_spellings_read_as_inet_aton_reads_them(spelling, address):
    assert ipv4_literal(spelling) == ipaddress.IPv4Address(address)
    assert socket.inet_aton(spelling.rstrip(".")) == ipaddress.IPv4Address(address).packed


@pytest.mark.parametrize(
    "name", ["example.com", "1.2.3.4.5", "256.1.1.1", "1.16777216", "08.1.1.1", "0x.1g", "127..1", "", "1e3", "-1"]
)
def test_names_are_not_ipv4_literals(name):
    assert ipv4_literal(name) is None


def test_ip_literal_reads_ipv6_with_a_zone_and_brackets():
    assert ip_literal("[::1]") == ipaddress.ip_address("::1")
    assert address_refusal(ip_literal("fe80::1%25eth0")) == REFUSED_LINK_LOCAL
    assert ip_literal("hooks.example.com") is None and ip_literal("::zz") is None


def test_the_allow_list_takes_names_addresses_and_networks():
    policy = OutboundPolicy.build(ports=[80, (8000, 8999)], hosts=["Hooks.Internal.", "10.0.0.0/8", "::1", "127.0.0.1"])
    assert policy.allowed_names == {"hooks.internal"}
    assert policy.address_allowed(ipaddress.ip_address("10.9.8.7"))
    assert policy.address_allowed(ipaddress.ip_address("::ffff:10.9.8.7"))  # the same address, mapped
    assert policy.address_allowed(ipaddress.ip_address("::1"))
    assert not policy.address_allowed(ipaddress.ip_address("192.168.0.1"))
    assert [policy.port_allowed(p) for p in (80, 443, 8000, 8500, 8999, 9000)] == [True, False, True, True, True, False]
    assert policy.ports_text() == "80, 8000-8999"
    assert registration_refusal("http://hooks.internal:8080/x", policy) is None
    assert registration_refusal("http://10.1.2.3:80/x", policy) is None
    assert registration_refusal("http://10.1.2.3:2375/x", policy).category == REFUSED_PORT  # ports hold for all
    assert registration_refusal("http://192.168.0.1/", policy).category == REFUSED_PRIVATE


def test_registration_refuses_literals_and_localhost_but_leaves_names_to_delivery():
    assert registration_refusal("https://hooks.example.com/x", DEFAULT) is None
    assert registration_refusal("https://93.184.215.14/x", DEFAULT) is None
    assert registration_refusal("http://localhost/", DEFAULT).category == REFUSED_LOOPBACK
    assert registration_refusal("http://api.localhost/", DEFAULT).category == REFUSED_LOOPBACK
    assert registration_refusal("http://0x7f.1/", DEFAULT).category == REFUSED_LOOPBACK
    assert registration_refusal("https://example.com:22/", DEFAULT).category == REFUSED_PORT


def test_settings_helpers_name_the_variable(monkeypatch):
    monkeypatch.setenv("WEBHOOK_ALLOWED_PORTS", "80, 443,8000-8999")
    assert env_port_ranges("WEBHOOK_ALLOWED_PORTS", "80") == [(80, 80), (443, 443), (8000, 8999)]
    monkeypatch.delenv("WEBHOOK_ALLOWED_PORTS")
    assert env_port_ranges("WEBHOOK_ALLOWED_PORTS", "80,443,8080,8443") == [
        (80, 80),
        (443, 443),
        (8080, 8080),
        (8443, 8443),
    ]
    for bad in ("http", "0", "70000", "9000-8000", "80-"):
        monkeypatch.setenv("WEBHOOK_ALLOWED_PORTS", bad)
        with pytest.raises(ImproperlyConfigured, match="WEBHOOK_ALLOWED_PORTS"):
            env_port_ranges("WEBHOOK_ALLOWED_PORTS", "80")
    monkeypatch.setenv("WEBHOOK_ALLOWED_HOSTS", "hooks.internal, 10.0.0.0/8,[::1],192.168.1.7")
    assert env_hosts("WEBHOOK_ALLOWED_HOSTS", []) == ["hooks.internal", "10.0.0.0/8", "[::1]", "192.168.1.7"]
    for bad in ("10.0.0.0/33", "http://x", "a b", "-bad.example"):
        monkeypatch.setenv("WEBHOOK_ALLOWED_HOSTS", bad)
        with pytest.raises(ImproperlyConfigured, match="WEBHOOK_ALLOWED_HOSTS"):
            env_hosts("WEBHOOK_ALLOWED_HOSTS", [])


def test_the_connection_goes_to_the_vetted_address_with_the_host_name_kept():
    resolver = mock.Mock(return_value=["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
    conn, path = outbound_connection("https://Hooks.Example.com/in?a=1", timeout=5, policy=DEFAULT, resolver=resolver)
    resolver.assert_called_once_with("hooks.example.com", 443)
    assert (conn.host, conn.port, path) == ("hooks.example.com", 443, "/in?a=1")  # Host header, SNI, cert check
    with (
        mock.patch("socket.create_connection", side_effect=ConnectionRefusedError("nope")) as connect,
        mock.patch("socket.getaddrinfo", side_effect=AssertionError("looked up again")),
    ):
        with pytest.raises(ConnectionRefusedError) as err:
            conn.connect()
    # Each vetted address in turn, never the name.
    assert [c.args[0] for c in connect.call_args_list] == [
        ("93.184.215.14", 443),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", 443),
    ]
    assert failure_category(err.value) == "connection refused"


def test_one_refused_address_refuses_the_name_before_any_socket():
    resolver = mock.Mock(return_value=["93.184.215.14", "10.0.0.1"])
    with mock.patch("socket.create_connection") as connect:
        with pytest.raises(OutboundRefused) as err:
            outbound_connection("https://hooks.example.com/", timeout=5, policy=DEFAULT, resolver=resolver)
    assert err.value.category == REFUSED_PRIVATE and "10.0.0.1" in err.value.detail
    connect.assert_not_called()


def test_the_system_resolver_is_used_when_none_is_given():
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 443))]
    with mock.patch.object(outbound.socket, "getaddrinfo", return_value=answers) as getaddrinfo:
        with pytest.raises(OutboundRefused):
            outbound_connection("https://hooks.example.com/", timeout=5, policy=DEFAULT)
    assert getaddrinfo.call_args.args[:2] == ("hooks.example.com", 443)


@pytest.mark.parametrize(
    "exc, category",
    [
        (TimeoutError(), "timeout"),
        (TimeoutError(), "timeout"),
        (ConnectionRefusedError(), "connection refused"),
        (ConnectionResetError(), "connection reset"),
        (outbound.ssl.SSLCertVerificationError(), "TLS error"),
        (outbound.ssl.SSLError(), "TLS error"),
        (socket.gaierror(), "could not resolve host"),
        (outbound.http.client.BadStatusLine("x"), "invalid HTTP answer"),
        (OSError(101, "unreachable"), "connection failed"),
    ],
)
def test_failures_become_categories(exc, category):
    assert failure_category(exc) == category


def test_a_non_ascii_url_is_sent_as_ascii():
    resolver = mock.Mock(return_value=["93.184.215.14"])
    conn, path = outbound_connection("https://Bücher.example/ä?q=ü", timeout=5, policy=DEFAULT, resolver=resolver)
    assert (conn.host, path) == ("xn--bcher-kva.example", "/%C3%A4?q=%C3%BC")
    resolver.assert_called_once_with("xn--bcher-kva.example", 443)
    for url in ("https://.é-/", "https://hooks.example.com/\x00", "https://hooks.example.com/a b"):
        with pytest.raises(OutboundRefused, match="^refused: invalid URL$"):
            outbound_connection(url, timeout=5, policy=DEFAULT, resolver=resolver)
