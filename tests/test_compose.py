"""docker-compose.yml's secrets come from the environment (.env), and its servers stay off public interfaces."""

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_setup_files import COMPOSE_SECRETS, docker_with_compose  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("postgres", "redis", "minio")


def compose_config(env, *args):
    return subprocess.run(
        ["docker", "compose", "--profile", "gpu", "config", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rendered(env) -> dict:
    done = compose_config(env)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def flat(value) -> str:
    return value if isinstance(value, str) else " ".join(value)


@pytest.mark.parametrize("name", sorted(COMPOSE_SECRETS))
@pytest.mark.parametrize("empty", [False, True])
def test_compose_refuses_to_start_without_each_secret(docker_with_compose, name, empty):  # noqa: F811
    env = {k: v for k, v in docker_with_compose.items() if k != name}
    if empty:
        env[name] = ""
    done = compose_config(env, "-q")
    assert done.returncode != 0, f"compose renders without {name}"
    assert name in done.stderr and ".env" in done.stderr, done.stderr


def test_no_password_is_written_in_the_compose_file():
    text = (ROOT / "docker-compose.yml").read_text()
    for fixed in ("lora:lora@", "POSTGRES_PASSWORD: lora", "lora-studio-minio-key", ":-lora-studio}"):
        assert fixed not in text, fixed


def test_every_service_takes_its_secrets_from_the_environment(docker_with_compose):  # noqa: F811
    services = rendered(docker_with_compose)["services"]
    s = COMPOSE_SECRETS
    app_roles = [name for name, svc in services.items() if "REDIS_URL" in (svc.get("environment") or {})]
    assert {"web", "worker-train", "worker-train-gpu", "worker-infer", "worker-background", "beat"} <= set(app_roles)
    for name in app_roles:
        env = services[name]["environment"]
        assert env["REDIS_URL"] == f"redis://:{s['REDIS_PASSWORD']}@redis:6379/0", name
        assert env["DATABASE_URL"] == f"postgres://lora:{s['POSTGRES_PASSWORD']}@postgres:5432/lora", name
        assert env["SECRET_KEY"] == s["SECRET_KEY"], name
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            s["MINIO_ROOT_USER"],
            s["MINIO_ROOT_PASSWORD"],
        ), name
    # Every Redis URL anywhere carries the password.
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if isinstance(value, str) and value.startswith(("redis://", "rediss://")):
                assert f":{s['REDIS_PASSWORD']}@" in value, (name, key)
    redis = services["redis"]
    command = flat(redis["command"])
    assert f"--requirepass {s['REDIS_PASSWORD']}" in command
    assert redis["environment"]["REDISCLI_AUTH"] == s["REDIS_PASSWORD"], "the healthcheck signs in"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == s["POSTGRES_PASSWORD"]
    minio = services["minio"]["environment"]
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == (s["MINIO_ROOT_USER"], s["MINIO_ROOT_PASSWORD"])
    bucket = services["minio-bucket"]["environment"]
    assert (bucket["AWS_ACCESS_KEY_ID"], bucket["AWS_SECRET_ACCESS_KEY"]) == (
        s["MINIO_ROOT_USER"],
        s["MINIO_ROOT_PASSWORD"],
    )
    # No other password-looking value is a literal.
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "_AUTH")) and key != "DEMO_PASSWORD":
                assert value in s.values(), (name, key, value)


def test_the_servers_publish_no_port_on_all_interfaces(docker_with_compose):  # noqa: F811
    services = rendered(docker_with_compose)["services"]
    for name in SERVERS:
        for port in services[name].get("ports", []):
            assert port.get("host_ip") in ("127.0.0.1", "::1"), (name, port)


def test_a_url_given_whole_replaces_the_built_one(docker_with_compose):  # noqa: F811
    """A host that reaches another host's servers gives the URLs (TLS) in .env."""
    url = "rediss://:other-secret@10.0.0.1:6379/0?ssl_cert_reqs=required"
    services = rendered({**docker_with_compose, "REDIS_URL": url})["services"]
    assert services["worker-train-gpu"]["environment"]["REDIS_URL"] == url


def test_env_example_lists_every_secret_empty_and_env_is_ignored():
    lines = (ROOT / ".env.example").read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    for name in COMPOSE_SECRETS:
        assert values[name] == "", f"{name} must be filled in, so an unfilled copy refuses to start"
    assert "token_urlsafe" in "\n".join(lines)
    done = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert done.returncode == 0, ".env is not in .gitignore"


def test_compose_never_prints_the_demo_password():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = flat(compose["services"]["web"]["command"])
    assert "ensure_login --password-env DEMO_PASSWORD" in command
