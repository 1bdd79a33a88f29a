"""Deployment settings read from the environment: plain HTTP by default (`make run`), HTTPS=1 for TLS,
the proxy header only when trusted, no placeholder SECRET_KEY, `check --deploy` clean with the documented
production settings, a strict Content-Security-Policy, and private files 0600 from the start."""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management.base import CommandError

from jobs.common.private_files import private_file_create

ROOT = Path(__file__).resolve().parents[2]
# README "Security" -> "Deployment behind TLS".
PRODUCTION = {
    "DEBUG": "0",
    "HTTPS": "1",
    "TRUST_PROXY_SSL_HEADER": "1",
    "ALLOWED_HOSTS": "studio.example.com",
    "SECRET_KEY": "9Zr4kQe7Lx2Vb8Nw1Tc6Hy3Mp0Gs5Fd-Ju_Ka7Wq4Er1Ty8Ui2Op6As3Df9Gh",
    "CSRF_TRUSTED_ORIGINS": "https://studio.example.com",
    "ALLOW_SIGNUP": "0",
}
DEPLOY_NAMES = [
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_PROXY_SSL_HEADER",
    "DEBUG",
    "ALLOW_SIGNUP",
]


def django_process(tmp_path, env: dict, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a new Python with the product's settings loaded from `env` (on top of a clean one)."""
    names = set(PRODUCTION) | {"TRUST_PROXY_SSL_HEADER", "HSTS_SECONDS", "CACHE_URL"}
    base = {k: v for k, v in os.environ.items() if k not in names}
    base.update(DJANGO_SETTINGS_MODULE="webapp.settings", LORA_STUDIO_VAR=str(tmp_path / "var"), LOG_LEVEL="WARNING")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=180
    )


def deploy_settings(tmp_path, env: dict) -> dict:
    code = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        f"print(json.dumps({{n: getattr(s, n) for n in {DEPLOY_NAMES!r}}}))"
    )
    done = django_process(tmp_path, env, code)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_defaults_serve_plain_http_for_make_run(tmp_path):
    s = deploy_settings(tmp_path, {})
    assert s["SESSION_COOKIE_SECURE"] is s["CSRF_COOKIE_SECURE"] is s["SECURE_SSL_REDIRECT"] is False
    assert s["SECURE_HSTS_SECONDS"] == 0 and s["SECURE_PROXY_SSL_HEADER"] is None and s["ALLOW_SIGNUP"] is True


def test_https_turns_on_secure_cookies_hsts_and_the_redirect(tmp_path):
    s = deploy_settings(tmp_path, {"HTTPS": "1"})
    assert s["SESSION_COOKIE_SECURE"] is s["CSRF_COOKIE_SECURE"] is s["SECURE_SSL_REDIRECT"] is True
    assert s["SECURE_HSTS_SECONDS"] >= 31_536_000 and s["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert s["SECURE_PROXY_SSL_HEADER"] is None  # a client could forge the header without a proxy
    s = deploy_settings(tmp_path, {"HTTPS": "1", "TRUST_PROXY_SSL_HEADER": "1", "HSTS_SECONDS": "600"})
    assert s["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"] and s["SECURE_HSTS_SECONDS"] == 600


def test_check_deploy_is_clean_with_the_documented_production_settings(tmp_path):
    code = (
        "import django; django.setup(); from django.core.management import call_command; "
        "call_command('check', '--deploy', '--fail-level', 'WARNING')"
    )
    done = django_process(tmp_path, PRODUCTION, code)
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr and "no issues" in done.stdout + done.stderr


@pytest.mark.parametrize("key", ["change-me-in-production", "django-insecure-" + "x" * 50, "too-short-a-key"])
def test_a_placeholder_or_short_secret_key_is_refused(tmp_path, key):
    done = django_process(tmp_path, {"SECRET_KEY": key}, "import django; django.setup()")
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr and "SECRET_KEY" in done.stderr.strip().splitlines()[-1]


def test_the_generated_secret_key_file_is_private_even_with_umask_0(tmp_path):
    done = django_process(tmp_path, {}, "import os; os.umask(0); import django; django.setup()")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "var" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text().strip()) >= 50
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_private_files_are_created_0600_and_never_overwritten(tmp_path, monkeypatch):
    modes = []
    real_open = os.open
    monkeypatch.setattr(
        os, "open", lambda path, flags, mode=0o777: modes.append((flags, mode)) or real_open(path, flags, mode)
    )
    old = os.umask(0)
    try:
        private_file_create(tmp_path / "secret", "s3cret")
    finally:
        os.umask(old)
    # Created exclusively with mode 0600 in the one call: no moment with wider permissions.
    assert modes == [(os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)]
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600 and (tmp_path / "secret").read_text() == "s3cret"
    with pytest.raises(FileExistsError):
        private_file_create(tmp_path / "secret", "other")
    assert (tmp_path / "secret").read_text() == "s3cret"


def test_the_demo_password_file_is_private(db, tmp_path, monkeypatch):
    from io import StringIO

    from django.core.management import call_command

    from jobs.accounts.management.commands import ensure_login

    monkeypatch.setattr(ensure_login, "PASSWORD_FILE", tmp_path / "demo_login.txt")
    (tmp_path / "demo_login.txt").write_text("stale")  # from an earlier database
    old = os.umask(0)
    try:
        out = StringIO()
        call_command("ensure_login", stdout=out)
    finally:
        os.umask(old)
    path = tmp_path / "demo_login.txt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() != "stale" and f"demo / {path.read_text()}" in out.getvalue()


def test_compose_demo_login_takes_the_admins_password_and_never_prints_it(db, tmp_path, monkeypatch):
    """docker-compose.yml runs `ensure_login --password-env DEMO_PASSWORD`: no password in its logs."""
    from io import StringIO

    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from jobs.accounts.management.commands import ensure_login

    monkeypatch.setattr(ensure_login, "PASSWORD_FILE", tmp_path / "demo_login.txt")
    (tmp_path / "demo_login.txt").write_text("from-make-run")  # a file left in the volume is not printed
    User = get_user_model()

    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    out = StringIO()
    call_command("ensure_login", "--password-env", "DEMO_PASSWORD", stdout=out)
    assert not User.objects.exists(), "no password set: no demo login"
    assert "from-make-run" not in out.getvalue() and "Sign in as" not in out.getvalue()

    monkeypatch.setenv("DEMO_PASSWORD", "short")
    with pytest.raises(CommandError, match="DEMO_PASSWORD"):
        call_command("ensure_login", "--password-env", "DEMO_PASSWORD", stdout=StringIO())
    assert not User.objects.exists()

    monkeypatch.setenv("DEMO_PASSWORD", "Admins-own-Pa55phrase")
    out = StringIO()
    call_command("ensure_login", "--password-env", "DEMO_PASSWORD", stdout=out)
    assert User.objects.get(username="demo").check_password("Admins-own-Pa55phrase")
    assert "Admins-own-Pa55phrase" not in out.getvalue() and "from-make-run" not in out.getvalue()
    assert "demo (the password in DEMO_PASSWORD)" in out.getvalue()
    assert (tmp_path / "demo_login.txt").read_text() == "from-make-run", "nothing written"


# --- in-process: headers ----------------------------------------------------------------------


def csp_directives(response) -> dict[str, list[str]]:
    header = response.headers["Content-Security-Policy"]
    return {d.split()[0]: d.split()[1:] for d in header.split(";") if d.strip()}


def test_pages_carry_a_strict_content_security_policy(client_in):
    for url in ("/accounts/login/", "/jobs/", "/datasets/"):
        response = client_in.get(url, follow=True)
        assert response.status_code == 200, url
        csp = csp_directives(response)
        assert csp["default-src"] == ["'self'"] and csp["frame-ancestors"] == ["'none'"]
        for directive in ("script-src", "style-src"):
            assert csp[directive] == ["'self'"], (url, directive, csp[directive])
        assert "'unsafe-eval'" not in response.headers["Content-Security-Policy"]


def test_swagger_ui_renders_under_the_policy_from_files_only(client_in):
    response = client_in.get("/api/docs/")
    assert response.status_code == 200 and csp_directives(response)["script-src"] == ["'self'"]
    html = response.content.decode()
    assert "<style" not in html and " style=" not in html
    assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", html))
    assert "/static/app/api_docs.js" in html and 'data-schema-url="/api/schema/"' in html
    assert client_in.get("/static/app/api_docs.js").status_code == 200


def test_templates_have_no_inline_styles():
    for path in (ROOT / "templates").rglob("*.html"):
        html = path.read_text()
        assert "<style" not in html and not re.search(r"\sstyle=", html), (
            f"{path}: move the style to static/app/app.css"
        )


def test_https_redirects_and_sends_hsts(client, db, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31_536_000
    response = client.get("/accounts/login/")
    assert response.status_code == 301 and response["Location"] == "https://testserver/accounts/login/"
    response = client.get("/accounts/login/", secure=True)
    assert response.status_code == 200 and "max-age=31536000" in response["Strict-Transport-Security"]
