"""Webhooks go only to the public internet: inside addresses in any spelling are refused before a socket
is opened, a name is resolved once and the connection goes to exactly the vetted address (no DNS
rebinding), registration refuses what it can, and users see a category, never exception text.

No test here contacts an inside address: names go through a test resolver, and the only real connections
go to a local receiver on 127.0.0.1 that the admin allow-list lets through."""

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
from contextlib import contextmanager
from unittest import mock

import pytest

from jobs.common import outbound
from jobs.webhooks.models import Webhook, WebhookDelivery
from jobs.webhooks.tasks import DeliveryFailed, webhook_deliver, webhook_post
from tests.local_http import local_http_server

PUBLIC = "93.184.215.14"
NAMES = {
    "hooks.example.com": [PUBLIC],
    "localhost": ["127.0.0.1", "::1"],
    "127.0.0.1.nip.io": ["127.0.0.1"],
    "metadata.google.internal": ["169.254.169.254"],
    "mixed.example.com": [PUBLIC, "10.0.0.1"],  # one bad address is enough
    "mapped.example.com": ["::ffff:10.0.0.1"],
    "ula.example.com": ["2606:4700::1111", "fd00::1"],
    "cgnat.example.com": ["100.64.1.1"],
    "zero.example.com": ["0.0.0.0"],
}


def resolve(host: str, port: int) -> list[str]:
    """The test DNS: NAMES, else the name does not exist."""
    try:
        return NAMES[host]
    except KeyError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


@contextmanager
def no_socket_opened():
    """Fail the test if anything connects or looks a name up through the system."""
    boom = AssertionError("a socket was opened")
    with (
        mock.patch("socket.create_connection", side_effect=boom) as create,
        mock.patch.object(socket.socket, "connect", side_effect=boom) as connect,
        mock.patch("socket.getaddrinfo", side_effect=AssertionError("the system resolver was asked")),
    ):
        yield
    create.assert_not_called()
    connect.assert_not_called()


SSRF = [
    ("http://127.0.0.1/", "refused: loopback address"),
    ("http://127.0.0.1:6390/", "refused: port not allowed"),  # the embedded Redis
    ("http://169.254.169.254/latest/meta-data/", "refused: link-local address"),
    ("http://[::1]/", "refused: loopback address"),
    ("http://[::1]:8000/", "refused: port not allowed"),
    ("http://10.0.0.5:2375/", "refused: port not allowed"),  # a Docker API
    ("http://10.0.0.5:8080/", "refused: private address"),
    ("http://2130706433/", "refused: loopback address"),
    ("http://0x7f.1/", "refused: loopback address"),
    ("http://017700000001/", "refused: loopback address"),
    ("http://127.1/", "refused: loopback address"),
    ("http://0x7f000001/", "refused: loopback address"),
    ("http://0177.0.0.1/", "refused: loopback address"),
    ("http://127.0.0.1./", "refused: loopback address"),
    ("http://0xa9fea9fe/", "refused: link-local address"),
    ("http://0/", "refused: unspecified address"),
    ("http://0.0.0.0:8080/", "refused: unspecified address"),
    ("http://[::]/", "refused: unspecified address"),
    ("http://[::ffff:127.0.0.1]/", "refused: loopback address"),
    ("http://[::ffff:a9fe:a9fe]/", "refused: link-local address"),
    ("http://[::127.0.0.1]/", "refused: loopback address"),
    ("http://[2002:7f00:1::]/", "refused: loopback address"),
    ("http://[64:ff9b::a9fe:a9fe]/", "refused: link-local address"),
    ("http://[fe80::1%25eth0]/", "refused: link-local address"),
    ("http://[fd00::1]/", "refused: private address"),
    ("https://100.64.0.1/", "refused: private address"),
    ("https://172.16.5.4/", "refused: private address"),
    ("https://192.168.1.1/", "refused: private address"),
    ("http://224.0.0.1/", "refused: multicast address"),
    ("http://[ff02::1]/", "refused: multicast address"),
    ("http://255.255.255.255/", "refused: reserved address"),
    ("http://192.0.2.10/", "refused: reserved address"),
    ("http://198.18.0.1/", "refused: reserved address"),
    ("http://240.0.0.1/", "refused: reserved address"),
    ("http://[2001:db8::1]/", "refused: reserved address"),
    ("http://localhost/", "refused: loopback address"),
    ("http://LOCALHOST./", "refused: loopback address"),
    ("http://127.0.0.1.nip.io/", "refused: loopback address"),
    ("https://metadata.google.internal/computeMetadata/v1/", "refused: link-local address"),
    ("https://mixed.example.com/", "refused: private address"),
    ("https://mapped.example.com/", "refused: private address"),
    ("https://ula.example.com/", "refused: private address"),
    ("https://cgnat.example.com/", "refused: private address"),
    ("https://zero.example.com/", "refused: unspecified address"),
    ("https://hooks.example.com:22/", "refused: port not allowed"),  # public, but not a web port
    ("https://hooks.example.com:99999/", "refused: invalid URL"),
    ("ftp://hooks.example.com/", "refused: invalid URL"),
    ("https://hooks.example.com/a b\r\nX-Injected: 1", "refused: invalid URL"),
    ("https://nowhere.example.com/", "could not resolve host"),
]


@pytest.mark.parametrize("url, category", SSRF, ids=[u for u, _ in SSRF])
def test_inside_targets_are_refused_before_any_socket_is_opened(url, category, caplog):
    assert len(SSRF) >= 20
    with no_socket_opened(), pytest.raises(DeliveryFailed) as err:
        webhook_post(url, b"{}", {}, deadline_s=5, resolver=resolve)
    assert str(err.value) == category and err.value.status_code is None
    assert category in caplog.text  # the details go to the server's log


def test_a_public_address_is_allowed_up_to_the_connect_step():
    resolver = mock.Mock(side_effect=resolve)
    with mock.patch("socket.create_connection", side_effect=ConnectionRefusedError(111, "Connection refused")) as c:
        with pytest.raises(DeliveryFailed) as err:
            webhook_post("https://hooks.example.com/in", b"{}", {}, deadline_s=5, resolver=resolver)
    assert str(err.value) == "connection refused"  # a category, not "[Errno 111] ..."
    resolver.assert_called_once_with("hooks.example.com", 443)
    (address, timeout, _source), _ = c.call_args
    assert address == (PUBLIC, 443) and 0 < timeout <= 5


def test_dns_rebinding_connects_to_the_address_that_was_checked():
    """The resolver answers a public address for the check, an inside one afterwards: the connection
    goes to the vetted address, and the name is never looked up a second time."""
    answers = iter([[PUBLIC], ["127.0.0.1"], ["169.254.169.254"]])
    resolver = mock.Mock(side_effect=lambda host, port: next(answers))
    with (
        mock.patch("socket.create_connection", side_effect=TimeoutError("timed out")) as connect,
        mock.patch("socket.getaddrinfo", side_effect=AssertionError("the system resolver was asked")),
    ):
        with pytest.raises(DeliveryFailed) as err:
            webhook_post("http://rebind.example.com:8080/hook", b"{}", {}, deadline_s=5, resolver=resolver)
    assert str(err.value) == "timeout: no complete answer within 5 s"
    assert resolver.call_count == 1
    assert [call.args[0] for call in connect.call_args_list] == [(PUBLIC, 8080)]


class HostEcho(http.server.BaseHTTPRequestHandler):
    """Answers 204 and records the Host header and path of each POST."""

    seen: list[tuple[str, str]] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.headers["Host"], self.path))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_pinned_delivery_reaches_an_allowed_receiver_with_its_host_name(settings):
    """End to end on 127.0.0.1, let through by the allow-list: the socket goes to the resolved address,
    the request still names the URL's host."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_ALLOWED_PORTS = [(1024, 65535)]
    HostEcho.seen = []
    with local_http_server(HostEcho) as base:
        port = int(base.rsplit(":", 1)[1])
        resolver = mock.Mock(return_value=["127.0.0.1"])
        status = webhook_post(
            f"http://hooks.example.com:{port}/in?x=1",
            b"{}",
            {"Content-Type": "application/json"},
            deadline_s=5,
            resolver=resolver,
        )
        assert status == 204 and HostEcho.seen == [(f"hooks.example.com:{port}", "/in?x=1")]
        # Without the allow-list the same name is refused, since it resolves to a loopback address.
        settings.WEBHOOK_ALLOWED_HOSTS = []
        with pytest.raises(DeliveryFailed, match="^refused: loopback address$"):
            webhook_post(f"http://hooks.example.com:{port}/in", b"{}", {}, deadline_s=5, resolver=resolver)
        # An allowed host name lets its addresses through, on allowed ports only.
        settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.internal"]
        assert webhook_post(f"http://hooks.internal:{port}/b", b"{}", {}, deadline_s=5, resolver=resolver) == 204
        settings.WEBHOOK_ALLOWED_PORTS = [(80, 80)]
        with pytest.raises(DeliveryFailed, match="^refused: port not allowed$"):
            webhook_post(f"http://hooks.internal:{port}/b", b"{}", {}, deadline_s=5, resolver=resolver)
    assert len(HostEcho.seen) == 2


# --- TLS: SNI and the certificate are checked against the URL's host name, not the address ----------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for hooks.example.com (openssl's command line makes it)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=hooks.example.com",
            "-addext",
            "subjectAltName=DNS:hooks.example.com",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return folder / "cert.pem", folder / "key.pem"


@contextmanager
def tls_receiver(cert, key):
    """HostEcho over TLS on 127.0.0.1; yields (port, the SNI names the server was sent)."""
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sslobj, name, ctx: server_names.append(name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HostEcho)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port, server_names
    finally:
        server.shutdown()
        server.server_close()


def test_tls_uses_the_host_name_for_sni_and_the_certificate_check(settings, certificate):
    cert, key = certificate
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_ALLOWED_PORTS = [(1024, 65535)]
    HostEcho.seen = []
    to_localhost = mock.Mock(return_value=["127.0.0.1"])
    trusting = ssl.create_default_context(cafile=str(cert))
    with tls_receiver(cert, key) as (port, server_names):
        # Not trusted by the system: a TLS error, shown as a category.
        with pytest.raises(DeliveryFailed, match="^TLS error$"):
            webhook_post(f"https://hooks.example.com:{port}/a", b"{}", {}, deadline_s=5, resolver=to_localhost)
        with mock.patch.object(outbound.ssl, "create_default_context", return_value=trusting):
            # Trusted, and the name matches although the socket goes to 127.0.0.1.
            assert (
                webhook_post(f"https://hooks.example.com:{port}/b", b"{}", {}, deadline_s=5, resolver=to_localhost)
                == 204
            )
        trusting = ssl.create_default_context(cafile=str(cert))
        with mock.patch.object(outbound.ssl, "create_default_context", return_value=trusting):
            # Trusted, but issued to another name than the URL's: refused.
            with pytest.raises(DeliveryFailed, match="^TLS error$"):
                webhook_post(f"https://other.example.com:{port}/c", b"{}", {}, deadline_s=5, resolver=to_localhost)
    assert server_names[:3] == ["hooks.example.com", "hooks.example.com", "other.example.com"]
    assert HostEcho.seen == [(f"hooks.example.com:{port}", "/b")]


# --- registration ---------------------------------------------------------------------------------

REFUSED_AT_REGISTRATION = [
    ("http://127.0.0.1/", "loopback address"),
    ("http://127.0.0.1:6390/", "allowed port"),
    ("http://169.254.169.254/latest/meta-data/", "link-local address"),
    ("http://[::1]:8000/", "allowed port"),
    ("http://10.0.0.5:2375/", "allowed port"),
    ("http://10.0.0.5/", "private address"),
    ("http://2130706433/", "loopback address"),
    ("http://0x7f.1/", "loopback address"),
    ("http://017700000001/", "loopback address"),
    ("http://127.1/", "loopback address"),
    ("http://localhost/", "loopback address"),
    ("https://[::ffff:10.0.0.1]/", "private address"),
    ("http://0.0.0.0/", "unspecified address"),
    ("https://example.com:22/", "allowed port"),
    ("https://example.com:99999/", "absolute http"),
]


@pytest.mark.parametrize("url, words", REFUSED_AT_REGISTRATION, ids=[u for u, _ in REFUSED_AT_REGISTRATION])
def test_rest_registration_refuses_inside_targets_naming_the_url(api, url, words):
    response = api.post("/api/v1/webhooks/", {"url": url}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["field"] == "url" and words in error["message"], error
    assert not Webhook.objects.exists()


def test_the_page_refuses_an_inside_target_with_the_reason(client_in):
    response = client_in.post("/account/webhooks/", {"url": "http://169.254.169.254/latest/meta-data/"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "The URL must point to the public internet, not to a link-local address" in page
    assert 'value="http://169.254.169.254/latest/meta-data/"' in page  # kept in the form to correct it
    assert not Webhook.objects.exists()


def test_the_allow_list_lets_an_admin_register_an_internal_target(api, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["10.0.0.0/8"]
    assert api.post("/api/v1/webhooks/", {"url": "http://10.0.0.5:8080/hook"}, format="json").status_code == 201
    response = api.post("/api/v1/webhooks/", {"url": "http://10.0.0.5:2375/"}, format="json")
    assert response.status_code == 400 and "allowed port (80, 443, 8080, 8443)" in response.json()["error"]["message"]


def test_a_name_is_registered_and_checked_at_delivery(api, user, django_capture_on_commit_callbacks):
    """DNS can change, so a name is not refused when registered; the delivery is, and the owner sees why
    (an old row with an inside URL is refused the same way)."""
    created = api.post("/api/v1/webhooks/", {"url": "https://mixed.example.com/hook"}, format="json")
    assert created.status_code == 201
    hook = Webhook.objects.get(id=created.json()["id"])
    with mock.patch("jobs.webhooks.tasks.webhook_deliver.delay"), django_capture_on_commit_callbacks(execute=True):
        delivery_id = api.post(f"/api/v1/webhooks/{hook.id}/test/").json()["id"]
    with no_socket_opened(), mock.patch.object(outbound, "system_resolve", side_effect=resolve):
        assert webhook_deliver(delivery_id) == "failed"  # a ping has one attempt
    (shown,) = api.get(f"/api/v1/webhooks/{hook.id}/deliveries/").json()["results"]
    assert (shown["status"], shown["attempts"], shown["response_code"], shown["last_error"]) == (
        "failed",
        1,
        None,
        "refused: private address",
    )

    old = Webhook.objects.create(owner=user, url="http://127.0.0.1:6390/")  # registered before the checks
    delivery = WebhookDelivery.objects.create(webhook=old, event="fine_tuning.job.failed", payload={"id": "msg_x"})
    with no_socket_opened(), pytest.raises(DeliveryFailed):
        webhook_deliver(str(delivery.id))
    delivery.refresh_from_db()
    assert delivery.last_error == "refused: port not allowed"
    page = api.get(f"/api/v1/webhooks/{old.id}/deliveries/").json()["results"][0]
    assert page["last_error"] == "refused: port not allowed"


def test_the_page_shows_categories_and_rotates_the_secret_once(client_in, user):
    hook = Webhook.objects.create(owner=user, url="https://hooks.example.com/x")
    WebhookDelivery.objects.create(
        webhook=hook, event="ping", payload={"id": "msg_x"}, attempts=1, last_error="refused: private address"
    )
    page = client_in.get("/account/webhooks/")
    text = page.content.decode()
    assert "refused: private address" in text and hook.secret not in text
    assert f'action="/account/webhooks/{hook.id}/rotate-secret/"' in text and "data-confirm=" in text
    assert client_in.get(f"/account/webhooks/{hook.id}/rotate-secret/").status_code == 405  # POST only
    rotated = client_in.post(f"/account/webhooks/{hook.id}/rotate-secret/")
    new = Webhook.objects.get(id=hook.id).secret
    assert rotated.status_code == 200 and rotated["Cache-Control"] == "no-store"
    assert new != hook.secret and new in rotated.content.decode()
    assert new not in client_in.get("/account/webhooks/").content.decode()
