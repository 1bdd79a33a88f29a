"""Settings. Defaults need no servers: SQLite and an embedded Redis.

DATABASE_URL (e.g. postgres://user@host/db) and REDIS_URL switch to real servers.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from redis import exceptions as redis_exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from jobs.common.private_files import private_file_create
from webapp.env import env_bool, env_choice, env_hosts, env_int, env_list, env_port_ranges, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("LORA_STUDIO_VAR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


# Keys copied from examples (docker-compose.yml used to default to the first one): refused, as is any
# key too short to be random.
PLACEHOLDER_SECRET_KEYS = {
    "change-me-in-production",
    "change-me",
    "changeme",
    "secret",
    "secret-key",
    "your-secret-key",
    "insecure",
}
SECRET_KEY_MIN_LENGTH = 32


def _secret_key() -> str:
    key = os.environ.get("SECRET_KEY")
    if key:
        if key.strip().lower() in PLACEHOLDER_SECRET_KEYS or key.startswith("django-insecure"):
            raise ImproperlyConfigured(
                "SECRET_KEY is a placeholder: set it to a long random value, e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
            )
        if len(key) < SECRET_KEY_MIN_LENGTH:
            raise ImproperlyConfigured(
                f"SECRET_KEY must be at least {SECRET_KEY_MIN_LENGTH} characters "
                f"(got {len(key)}); 50 random ones satisfy check --deploy"
            )
        return key
    # A per-install key kept out of git, so a fresh clone never shares one; readable by its owner only.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        import secrets

        try:
            private_file_create(path, secrets.token_urlsafe(50))
        except FileExistsError:
            pass  # another process of this install wrote it first: use theirs
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Behind TLS (README "Security"). HTTPS=1: cookies only over HTTPS, HSTS, and http:// redirected to https://.
# Off by default, so `make run` keeps working on http://127.0.0.1.
HTTPS = env_bool("HTTPS", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 31_536_000) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("HSTS_PRELOAD", False)
# Preloading binds the whole domain to HTTPS in browsers for months: the domain owner's call (HSTS_PRELOAD=1),
# so check --deploy does not ask for it.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
# Only behind a proxy that sets X-Forwarded-Proto itself (and strips the client's): else a client could
# claim HTTPS on a plain connection.
TRUST_PROXY_SSL_HEADER = env_bool("TRUST_PROXY_SSL_HEADER", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TRUST_PROXY_SSL_HEADER else None
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy (django-csp): scripts and styles only from files on this server (no inline
# ones, no eval), no framing, forms post only here. data: images are the icons in Swagger UI's CSS.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "axes",
    # Domain apps, lowest first: each may import only those above it in this list (see README "Layout").
    "jobs.legacy_schema",
    "jobs.accounts",
    "jobs.base_models",
    "jobs.datasets",
    "jobs.training",
    "jobs.arena",
    "jobs.webhooks",
    "jobs.tracking",
    "jobs.sweeps",
    "jobs.benchmarks",
    "jobs.openai_compat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]

ROOT_URLCONF = "webapp.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "webapp.wsgi.application"
ASGI_APPLICATION = "webapp.asgi.application"

_sqlite_path = VAR_DIR / "db.sqlite3"
DATABASES = {"default": dj_database_url.parse(env_str("DATABASE_URL", f"sqlite:///{_sqlite_path}"), conn_max_age=0)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Web and two workers write to one file: WAL, immediate transactions and a busy timeout.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    DATABASES["default"]["TEST"] = (
        {"NAME": str(VAR_DIR / "test-db.sqlite3")} if env_bool("SQLITE_TEST_FILE", False) else {}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Anyone who can reach the site may create an account; turn off on a server where an admin creates them
# (python manage.py createsuperuser, or the admin site).
ALLOW_SIGNUP = env_bool("ALLOW_SIGNUP", True)

# Failed log-ins (django-axes): LOGIN_FAILURE_LIMIT failures for one username from one IP address lock
# that pair out for LOGIN_LOCKOUT_MINUTES; a success resets the count. Counted in the database.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = dt.timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# Reverse proxies in front of the web server that append the client's address to X-Forwarded-For (0: none,
# the header is ignored). Behind a proxy, set it: else every failure counts against the proxy's one address
# and anyone could lock a user out (jobs.common.client_address).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
AXES_CLIENT_IP_CALLABLE = "jobs.common.client_address.client_address"
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "jobs.accounts.views.login_locked_out"
AXES_HTTP_RESPONSE_CODE = 429
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "job-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise serves through the finders; an absent root only warns
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))


# Object storage (README "Several machines"): STORAGE_URL=s3://BUCKET/PREFIX keeps every product file in an
# S3-compatible store (jobs.common.blobs), MEDIA_ROOT then being this machine's cache. Endpoint and credentials come
# from boto3's own variables: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION.
def _object_storage(url: str) -> dict[str, Any] | None:
    if not url:
        return None
    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if parts.scheme != "s3" or not bucket or parts.query or parts.fragment:
        raise ImproperlyConfigured(f"STORAGE_URL must look like s3://BUCKET/PREFIX (got {url!r})")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "location": prefix,
            "file_overwrite": True,
            "default_acl": None,
            "endpoint_url": endpoint,
            "signature_version": "s3v4",
            # MinIO and most self-hosted stores serve buckets as paths, not subdomains.
            "addressing_style": "path" if endpoint else None,
            "region_name": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or None,
        },
    }


STORAGE_URL = env_str("STORAGE_URL", "")
_files_storage = _object_storage(STORAGE_URL)  # None without STORAGE_URL
if _files_storage is not None:
    STORAGES["files"] = _files_storage
# Downloads stream through the web server; with this on, they redirect to a signed URL of the store instead
# (the store's endpoint must then be reachable from the users' browsers).
STORAGE_DOWNLOAD_REDIRECT = env_bool("STORAGE_DOWNLOAD_REDIRECT", False)
STORAGE_SIGNED_URL_SECONDS = env_int("STORAGE_SIGNED_URL_SECONDS", 300)
# Where a machine keeps its copies of base models registered from the store (s3://...).
MODEL_CACHE_DIR = Path(env_str("MODEL_CACHE_DIR", str(VAR_DIR / "model-cache")))

# Uploads: streamed to disk past 2.5 MB, refused past the limit.
DATASET_MAX_BYTES = env_int("DATASET_MAX_BYTES", 200 * 1024 * 1024)
# Any request body: refused with 413 by webapp.asgi before Django reads it (and before authentication).
MAX_REQUEST_BYTES = env_int("MAX_REQUEST_BYTES", DATASET_MAX_BYTES + 1024 * 1024)
# The same for a request without a session cookie or API key (the sign-in form needs a few KB).
MAX_ANONYMOUS_REQUEST_BYTES = env_int("MAX_ANONYMOUS_REQUEST_BYTES", 64 * 1024)
# What one uploaded file may unpack into (worker.data.limits.DataLimits), checked while it is read
# in a child process limited to DATASET_PARSE_MEMORY_MB of memory and DATASET_PARSE_SECONDS.
DATASET_MAX_ROWS = env_int("DATASET_MAX_ROWS", 200_000)
DATASET_MAX_FIELD_CHARS = env_int("DATASET_MAX_FIELD_CHARS", 1_000_000)
DATASET_MAX_TOTAL_CHARS = env_int("DATASET_MAX_TOTAL_CHARS", 200_000_000)
DATASET_MAX_NESTING = env_int("DATASET_MAX_NESTING", 64)
DATASET_MAX_COLUMNS = env_int("DATASET_MAX_COLUMNS", 1_000)
DATASET_PARSE_MEMORY_MB = env_int("DATASET_PARSE_MEMORY_MB", 2048)
DATASET_PARSE_SECONDS = env_int("DATASET_PARSE_SECONDS", 120)
# Uploads up to this size are checked during the request (instant, located errors); larger ones are
# stored and checked by the background worker while the page shows the check's progress.
DATASET_CHECK_INLINE_BYTES = env_int("DATASET_CHECK_INLINE_BYTES", 1024 * 1024)
# Parse children started by requests (each up to DATASET_PARSE_MEMORY_MB): at most this many per user and in
# all, across every web process (counted in Redis); beyond, the upload is refused with 429 and Retry-After.
PARSE_CHILDREN_PER_USER = env_int("PARSE_CHILDREN_PER_USER", 2)
PARSE_CHILDREN_TOTAL = env_int("PARSE_CHILDREN_TOTAL", 4)
# Python graders (reinforcement fine-tuning): each answer is scored in a child with no network and no files
# outside its folder, within GRADER_SECONDS of wall clock, GRADER_CPU_SECONDS of CPU and GRADER_MEMORY_MB; those
# started by requests (validate, run, try on a row) are at most GRADER_CHILDREN_PER_USER per user and
# GRADER_CHILDREN_TOTAL in all, across web processes (counted in Redis), beyond which 429 with Retry-After.
GRADER_SECONDS = env_int("GRADER_SECONDS", 5)
GRADER_CPU_SECONDS = env_int("GRADER_CPU_SECONDS", 2)
GRADER_MEMORY_MB = env_int("GRADER_MEMORY_MB", 512)
GRADER_CHILDREN_PER_USER = env_int("GRADER_CHILDREN_PER_USER", 2)
GRADER_CHILDREN_TOTAL = env_int("GRADER_CHILDREN_TOTAL", 4)
# A judge model of a reinforcement job (score_model, label_model) answers at most this many tokens per answer.
GRADER_JUDGE_TOKENS = env_int("GRADER_JUDGE_TOKENS", 512)
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# Redis: REDIS_URL for a real server; unset means the embedded one `make run` starts.
EMBEDDED_REDIS_PORT = env_int("EMBEDDED_REDIS_PORT", 6390)
REDIS_URL = env_str("REDIS_URL", f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0")
EMBEDDED_REDIS = "REDIS_URL" not in os.environ

CELERY_BROKER_URL = REDIS_URL
# rediss:// (Redis over TLS, README "Keep the servers off public networks"): the broker checks the server's
# certificate as redis-py does, where kombu alone would accept any (ssl_cert_reqs=none in the URL opts out).
if urlsplit(REDIS_URL).scheme == "rediss" and "ssl_cert_reqs" not in urlsplit(REDIS_URL).query:
    CELERY_BROKER_USE_SSL = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
# Queues by the fixed task names of jobs.common.queue. The database is the train queue: `train` carries only
# wake-ups, which any free train worker takes to claim the fairest job that fits it (jobs.training.tasks).
CELERY_TASK_ROUTES = {
    "training.job_run": {"queue": "train"},
    # infer answers chat only, so nothing slow (a merge, a webhook endpoint that hangs) can hold a chat up.
    "arena.chat_answer": {"queue": "infer"},
    "arena.chat_round": {"queue": "infer"},
    # background: merged exports, webhook deliveries and the sweeps that re-queue lost ones.
    "training.adapter_merge": {"queue": "background"},
    "training.sweep_merges": {"queue": "background"},
    "webhooks.deliver": {"queue": "background"},
    "tracking.mlflow_log": {"queue": "background"},
    "tracking.sweep": {"queue": "background"},
    "webhooks.sweep": {"queue": "background"},
    # The sweeps must run while the train worker is dead or busy, and never wait behind chat.
    "training.sweep_jobs": {"queue": "background"},
    "arena.sweep_answers": {"queue": "background"},
    "sweeps.advance": {"queue": "background"},
    "training.expire_files": {"queue": "background"},
    "user_datasets.expire_uploads": {"queue": "background"},
    # Large uploads are checked, and token lengths counted, off the web process.
    "user_datasets.check_upload": {"queue": "background"},
    "user_datasets.token_profile": {"queue": "background"},
    "user_datasets.sweep": {"queue": "background"},
    # Base models from the Hub or a GGUF upload are made off the web process.
    "base_models.hub_download": {"queue": "background"},
    "training.hub_publish": {"queue": "background"},
    "base_models.gguf_convert": {"queue": "background"},
    # A judge comparing two models waits on the infer worker's answers from a background thread.
    "arena.judgement_run": {"queue": "background"},
    "arena.sweep_judgements": {"queue": "background"},
    "benchmarks.run": {"queue": "background"},
    "benchmarks.sweep": {"queue": "background"},
    # An eval run (OpenAI's /v1/evals) waits on the infer worker's answers, as a judgement does.
    "benchmarks.eval_run": {"queue": "background"},
    "benchmarks.sweep_evals": {"queue": "background"},
}
# The background worker's threads, shared out by kind of work (jobs.common.shares): each kind runs at most its
# share at once, and the worker runs with as many threads as the shares add up to (Procfile: -c 8), so a kind
# that is flooded (a user pinging a dead endpoint, a long Hub download) never takes the threads of another.
BACKGROUND_SHARES = {
    "checks": env_int("BACKGROUND_SHARE_CHECKS", 2),  # large-upload checks and token counts
    "exports": env_int("BACKGROUND_SHARE_EXPORTS", 2),  # merged exports, Hub downloads, GGUF conversions
    "deliveries": env_int("BACKGROUND_SHARE_DELIVERIES", 3),  # webhook deliveries, test pings, MLflow logging
    "sweeps": env_int("BACKGROUND_SHARE_SWEEPS", 1),  # the sweeps that re-queue lost work, file expiry
    "judgements": env_int("BACKGROUND_SHARE_JUDGEMENTS", 1),  # judge models comparing two models (long waits)
}
# Within a kind's share, at most this many at once per user, so one user's slow endpoints or downloads leave
# the rest of the share to others.
BACKGROUND_OWNER_SHARES = {
    "exports": env_int("BACKGROUND_OWNER_SHARE_EXPORTS", 1),
    "deliveries": env_int("BACKGROUND_OWNER_SHARE_DELIVERIES", 1),
    "judgements": env_int("BACKGROUND_OWNER_SHARE_JUDGEMENTS", 1),
}
# A task whose share is full goes back to the broker for this many seconds instead of holding a thread.
BACKGROUND_DEFER_SECONDS = env_int("BACKGROUND_DEFER_SECONDS", 2)
SWEEP_SECONDS = env_int("SWEEP_SECONDS", 30)  # how often Celery beat runs the sweeps
# The sweeps put stranded work back on track (see jobs.training.claims, the train workers' wake-ups, the merge
# and webhook sweeps); one beat process schedules them, whatever the number of workers, and each is safe
# to run twice.
CELERY_BEAT_SCHEDULE = {
    "sweep-jobs": {"task": "training.sweep_jobs", "schedule": SWEEP_SECONDS},
    "sweep-answers": {"task": "arena.sweep_answers", "schedule": SWEEP_SECONDS},
    "sweep-judgements": {"task": "arena.sweep_judgements", "schedule": SWEEP_SECONDS},
    "sweep-merges": {"task": "training.sweep_merges", "schedule": SWEEP_SECONDS},
    "sweep-webhooks": {"task": "webhooks.sweep", "schedule": SWEEP_SECONDS},
    "sweep-mlflow": {"task": "tracking.sweep", "schedule": SWEEP_SECONDS},
    "sweep-datasets": {"task": "user_datasets.sweep", "schedule": SWEEP_SECONDS},
    "sweep-sweeps": {"task": "sweeps.advance", "schedule": SWEEP_SECONDS},
    "sweep-benchmarks": {"task": "benchmarks.sweep", "schedule": SWEEP_SECONDS},
    "sweep-evals": {"task": "benchmarks.sweep_evals", "schedule": SWEEP_SECONDS},
    "expire-files": {"task": "training.expire_files", "schedule": 3600},
    "expire-uploads": {"task": "user_datasets.expire_uploads", "schedule": 3600},
}
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

# Per-user limits (defaults; an administrator overrides them per user: admin > Quotas). Over a limit,
# every interface answers 429 naming it. The train queue is fair: the next job to start belongs to the
# user with the fewest running jobs who started one least recently.
QUOTA_ACTIVE_JOBS = env_int("QUOTA_ACTIVE_JOBS", 20)  # queued + running + paused
QUOTA_RUNNING_JOBS = env_int("QUOTA_RUNNING_JOBS", 1)  # training at once
QUOTA_COMPUTE_SECONDS_PER_DAY = env_int("QUOTA_COMPUTE_SECONDS_PER_DAY", 12 * 3600)
# How often a running job asks whether its owner's daily training time is used up (it pauses when it is).
COMPUTE_QUOTA_CHECK_SECONDS = env_int("COMPUTE_QUOTA_CHECK_SECONDS", 30)
# Storage counts what is stored: datasets (original + normalised), waiting uploads, token counts, job folders
# (data snapshots, checkpoints, adapters, zips, merged exports) and the user's own models.
QUOTA_STORAGE_BYTES = env_int("QUOTA_STORAGE_BYTES", 20 * 1024**3)
QUOTA_API_KEYS = env_int("QUOTA_API_KEYS", 20)
QUOTA_WEBHOOKS = env_int("QUOTA_WEBHOOKS", 10)
JOB_MAX_RUN_SECONDS = env_int("JOB_MAX_RUN_SECONDS", 24 * 3600)  # a job's training time, all its runs together
UPLOAD_PENDING_HOURS = env_int("UPLOAD_PENDING_HOURS", 24)  # uploads waiting for a column mapping
MERGED_EXPORT_DAYS = env_int(
    "MERGED_EXPORT_DAYS", 7
)  # exports (merged models, GGUF files) are deleted after this many days

# Engine
TRAIN_DEVICE = env_str("TRAIN_DEVICE", "auto")
TRAIN_THREADS = env_int("TRAIN_THREADS", 0)  # 0: torch's default
# A job may ask for this many devices (data-parallel processes: GPUs, or CPU processes sharing the cores);
# a CUDA worker also refuses more than it has GPUs.
TRAIN_MAX_DEVICES = env_int("TRAIN_MAX_DEVICES", 8)
# How long a rank waits in a collective for the others (rank 0 saving a checkpoint, say) before the run fails.
TRAIN_DIST_TIMEOUT_SECONDS = env_int("TRAIN_DIST_TIMEOUT_SECONDS", 300)
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3)
# Memory a train worker may keep base models loaded in between jobs (worker.warm): a job on a kept base starts
# training without loading it again. 0 keeps none.
TRAIN_WARM_MODELS_MB = env_int("TRAIN_WARM_MODELS_MB", 4096)
TRAIN_MEMORY_LIMIT_MB = env_int("TRAIN_MEMORY_LIMIT_MB", 0)  # 0: this machine's RAM (or the GPU's memory)
# Fit by memory (jobs.training.routing, jobs.training.workers): a free train worker claims only a job that fits
# its devices and memory (detected, or WORKER_CAPACITY='{"device": "cpu", "count": 1, "memory_mb": 4000}'). Each
# announces them for the Workers page and the reasons jobs wait, renewed every WORKER_HEARTBEAT_SECONDS and gone
# three beats after it stops. A job that fits no live worker is refused at submit (ROUTING_NO_FIT=refuse) or
# waits for one (wait); with no worker announced the web checks its own memory.
ROUTING_NO_FIT = env_choice("ROUTING_NO_FIT", "wait", ("wait", "refuse"))
WORKER_CAPACITY = env_str("WORKER_CAPACITY", "")
WORKER_HEARTBEAT_SECONDS = env_int("WORKER_HEARTBEAT_SECONDS", 10)
# A job's lease on the database's clock, renewed by its worker's heartbeat every third of it; a killed
# job resumes within the lease plus one sweep.
JOB_LEASE_SECONDS = env_int("JOB_LEASE_SECONDS", 120)
# Chat is bounded: per request, and answers in flight per user (history beyond the model's context is
# cut from the oldest end, with a note in the answer).
CHAT_MAX_MESSAGES = env_int("CHAT_MAX_MESSAGES", 64)
CHAT_MAX_CHARS = env_int("CHAT_MAX_CHARS", 32000)
CHAT_MAX_NEW_TOKENS = env_int("CHAT_MAX_NEW_TOKENS", 1024)
CHAT_MAX_PENDING_PER_USER = env_int("CHAT_MAX_PENDING_PER_USER", 6)
CHAT_STUCK_SECONDS = env_int("CHAT_STUCK_SECONDS", 600)  # a streaming answer older than this lost its worker
# The infer worker keeps bases loaded (least recently used evicted) within this many MB of weights,
# adapters included; a model that cannot fit alone is refused with a clear error.
INFER_MEMORY_BUDGET_MB = env_int("INFER_MEMORY_BUDGET_MB", 8192)
INFER_MAX_ADAPTERS_PER_BASE = env_int("INFER_MAX_ADAPTERS_PER_BASE", 0)  # 0: only the budget limits them
# A merged export loads the whole base unquantized: refused with a job event past this many MB.
MERGE_MEMORY_BUDGET_MB = env_int("MERGE_MEMORY_BUDGET_MB", INFER_MEMORY_BUDGET_MB)
# A pending merge whose marker has not been touched (queued or heartbeat) for this long is re-queued by the sweep.
MERGE_STALE_SECONDS = env_int("MERGE_STALE_SECONDS", 600)
# Benchmark suites (jobs.benchmarks): a run loads the base and the adapter once, within MERGE_MEMORY_BUDGET_MB,
# and stops past BENCHMARK_SECONDS; a warning shows when the adapter scores more than BENCHMARK_FORGET_MARGIN
# percentage points below its base on a general task. BENCHMARK_AFTER_JOB: suites (comma-separated, e.g.
# general-skills) run after every job that succeeds; empty (the default): only when asked for.
BENCHMARK_SECONDS = env_int("BENCHMARK_SECONDS", 1800)
BENCHMARK_FORGET_MARGIN = env_int("BENCHMARK_FORGET_MARGIN", 5)
BENCHMARK_AFTER_JOB = env_list("BENCHMARK_AFTER_JOB", [])
# One webhook attempt (connect, send, read the answer) ends after this many seconds in all.
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 15)
# Outbound requests (webhooks) go only to public internet addresses, on these ports (ranges allowed:
# `80,443,8000-8999`); the port rule holds for allowed hosts too (common/outbound.py).
WEBHOOK_ALLOWED_PORTS = env_port_ranges("WEBHOOK_ALLOWED_PORTS", "80,443,8080,8443")
# Internal targets an admin lets webhooks reach anyway: host names, IP addresses or CIDRs.
WEBHOOK_ALLOWED_HOSTS = env_hosts("WEBHOOK_ALLOWED_HOSTS", [])
# Test pings still being sent (not answered or failed) a user may have across their webhooks; one per webhook.
WEBHOOK_PINGS_IN_FLIGHT_PER_USER = env_int("WEBHOOK_PINGS_IN_FLIGHT_PER_USER", 2)
# Experiment tracking: every finished job of a user without their own MLflow server is logged to this one
# (empty: none); its host is allowed for outbound requests. Users set their own on Account > Tracking.
MLFLOW_TRACKING_URI = env_str("MLFLOW_TRACKING_URI", "")
MLFLOW_EXPERIMENT = env_str("MLFLOW_EXPERIMENT", "")  # empty: "LoRA Studio"
MLFLOW_TRACKING_TOKEN = env_str("MLFLOW_TRACKING_TOKEN", "")  # sent as a Bearer token to the site's server
# One MLflow request ends after this many seconds; a job's logging gets this many attempts, backing off
# from MLFLOW_RETRY_BASE_SECONDS (doubling), then the job's log says it could not log.
MLFLOW_TIMEOUT_SECONDS = env_int("MLFLOW_TIMEOUT_SECONDS", 30)
MLFLOW_MAX_ATTEMPTS = env_int("MLFLOW_MAX_ATTEMPTS", 5)
MLFLOW_RETRY_BASE_SECONDS = env_int("MLFLOW_RETRY_BASE_SECONDS", 30)
DEMO_MODEL_DIR = Path(env_str("DEMO_MODEL_DIR", str(VAR_DIR / "models" / "SmolLM2-135M-Instruct")))
# Base models (base_models): staff add shared ones on the Models page; USER_MODELS=1 lets every user add
# models private to them. Downloads and GGUF conversions are made under MEDIA_ROOT/base-models/ (and
# published to the object store when STORAGE_URL is set, so workers on other machines fetch them).
USER_MODELS = env_bool("USER_MODELS", False)
# The Hugging Face Hub (or a mirror speaking its file API). OFFLINE=1 refuses Hub downloads with a clear
# message (`make run` sets it: the demo machine has no internet). Hub requests go through jobs.common.outbound:
# public addresses only, on HUB_ALLOWED_PORTS, plus the internal hosts an admin lists in HUB_ALLOWED_HOSTS
# (a mirror inside the network).
HF_ENDPOINT = env_str("HF_ENDPOINT", "https://huggingface.co")
OFFLINE = env_bool("OFFLINE", False)
HUB_ALLOWED_PORTS = env_port_ranges("HUB_ALLOWED_PORTS", "80,443")
HUB_ALLOWED_HOSTS = env_hosts("HUB_ALLOWED_HOSTS", [])
HUB_TIMEOUT_SECONDS = env_int("HUB_TIMEOUT_SECONDS", 30)
# How long a Hub token given for a download is kept (in Redis only, never in the database) for that download.
HUB_TOKEN_SECONDS = env_int("HUB_TOKEN_SECONDS", 24 * 3600)
# A GGUF upload is refused past this size (a larger one also needs MAX_REQUEST_BYTES raised).
GGUF_MAX_BYTES = env_int("GGUF_MAX_BYTES", DATASET_MAX_BYTES)
# Before a GGUF is converted its header is read: a file declaring more weights than it holds, more than
# GGUF_MAX_PARAMETERS, or a float32 model larger than the free disk or memory is refused with the figures. The
# conversion then runs in a child process capped at GGUF_CONVERT_MEMORY_MB of address space and
# GGUF_CONVERT_SECONDS; a conversion whose worker died is started again at most GGUF_CONVERT_ATTEMPTS times.
GGUF_MAX_PARAMETERS = env_int("GGUF_MAX_PARAMETERS", 20_000_000_000)
# Default: this machine's memory (the header check also holds it to the memory free when it starts).
GGUF_CONVERT_MEMORY_MB = env_int(
    "GGUF_CONVERT_MEMORY_MB", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
)
GGUF_CONVERT_SECONDS = env_int("GGUF_CONVERT_SECONDS", 3600)
GGUF_CONVERT_ATTEMPTS = env_int("GGUF_CONVERT_ATTEMPTS", 2)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "jobs.accounts.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["jobs.accounts.auth.ApiKeyRateThrottle", "jobs.accounts.auth.SessionUserRateThrottle"],
    "EXCEPTION_HANDLER": "jobs.common.errors.rest_exception_handler",
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,  # an address-keyed throttle reads X-Forwarded-For as the lockout does
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": [
        "jobs.common.rest.SafeJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
}

# OpenAPI 3 at /api/schema/, Swagger UI at /api/docs/; the UI's assets come from the sidecar package (no CDN).
SPECTACULAR_SETTINGS = {
    "TITLE": "LoRA Studio API",
    "DESCRIPTION": "Datasets, LoRA fine-tuning jobs and adapters (/api/v1/), and the OpenAI-compatible API "
    "(/v1/). Authenticate with `Authorization: Bearer ls-...` (a personal API key) or a session.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Requests per API key ("600/min", "10/s") and per signed-in browser user on /api/v1/.
API_THROTTLE_RATE = env_str("API_THROTTLE_RATE", "600/min")
# Live streams (SSE): one Redis connection pool per web process, a cap per user, a maximum lifetime
# after which the browser reconnects (with Last-Event-ID) and misses nothing.
SSE_MAX_CONNECTIONS = env_int("SSE_MAX_CONNECTIONS", 200)
SSE_MAX_STREAMS_PER_USER = env_int("SSE_MAX_STREAMS_PER_USER", 10)
SSE_MAX_SECONDS = env_int("SSE_MAX_SECONDS", 900)
SESSION_THROTTLE_RATE = env_str("SESSION_THROTTLE_RATE", "1200/min")


def _redis_db(url: str, db: int) -> str:
    """url with its database number replaced."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


# The counts live in Redis, so a limit holds across web processes and machines. Its own database
# (the broker's server, db 1): the cache may be flushed without touching queued tasks.
CACHE_URL = env_str("CACHE_URL", _redis_db(REDIS_URL, 1))
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": CACHE_URL,
        "KEY_PREFIX": "lora-studio",
        # A connection broken by a Redis restart is opened again, not reported as an error.
        "OPTIONS": {
            "retry_on_error": [redis_exceptions.ConnectionError, redis_exceptions.TimeoutError],
            "retry": Retry(ExponentialBackoff(cap=1.0), 3),
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
        },
    }
}
# How long a non-streaming /v1/chat/completions call waits for the infer worker.
CHAT_COMPLETION_TIMEOUT = env_int("CHAT_COMPLETION_TIMEOUT", 300)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"httpx": {"level": "WARNING"}},
}
