"""Settings for the portal, read from environment variables (see `.env.example`).

Defaults run on a laptop: SQLite under `var/`, Redis and the S3 server on localhost as
`make run` starts them. Production sets `DJANGO_DEBUG=0`, a secret key, hosts and a
`DATABASE_URL`; the HTTPS settings then default to on, so `manage.py check --deploy`
is clean.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from core.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_ranks,
    env_size_choices,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("PORTAL_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )
    SECRET_KEY = "insecure-development-key-do-not-use-in-production-" + "x" * 20

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
SITE_URL = env_str("PORTAL_SITE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_countries",
    "allauth",
    "allauth.account",
    "portal",
    "catalog",
    "accounts",
    "weights",
    "inference",
    "evaluations",
    "review",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Text PostgreSQL cannot store (NUL, lone surrogates) is a 400 before any view runs.
    "core.text.TextGuardMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "core.errors.DomainErrorMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

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
                "accounts.context_processors.nav",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
# DATABASE_URL selects the database (postgres://user:pass@host:5432/name for production).
_database_url = env_str("DATABASE_URL")
if not _database_url:
    VAR_DIR.mkdir(parents=True, exist_ok=True)  # the embedded SQLite database lives here
    _database_url = f"sqlite:///{VAR_DIR / 'portal.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        _database_url,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded database serves concurrent requests (threaded server, worker, beat):
    # - WAL lets readers go on while one writer commits;
    # - IMMEDIATE takes the write lock when a transaction starts, so two transactions never
    #   both read and then both try to upgrade to writing (SQLite fails one of them at once
    #   with "database is locked", whatever the busy timeout); it also serializes the
    #   check-then-change of every state transition, as select_for_update does elsewhere;
    # - the busy timeout makes a writer wait its turn instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": env_float("SQLITE_BUSY_TIMEOUT", 20.0),
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        }
    )
else:
    # Django's backend with a health check that sends nothing while the connection is quiet
    # (core/postgresql/base.py): CONN_HEALTH_CHECKS' `SELECT 1` was a round trip per request.
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"]["ENGINE"] = "core.postgresql"
    # The hot reads written as plain SQL (core/rows.py) run as prepared statements on each
    # kept connection: PostgreSQL plans each once instead of at every request (planning
    # was most of its CPU for a links request or a status poll; bench/request_cost.py).
    # psycopg prepares a statement at its Nth run on a connection; Django's ORM queries
    # are never prepared. Set DATABASE_PREPARE_THRESHOLD to "off" behind a pooler that
    # cannot hold prepared statements (PgBouncer in transaction mode before 1.21).
    _prepare = env_str("DATABASE_PREPARE_THRESHOLD", "2").strip().lower()
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = (
        None if _prepare in ("off", "none", "") else int(_prepare)
    )
# Several test runs may share one PostgreSQL server: each can name its own test database.
DATABASES["default"]["TEST"] = {"NAME": env_str("PORTAL_TEST_DB_NAME") or None}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The cache holds login throttling and rate-limit counters. It lives in the database so the
# site keeps working (and keeps counting) when Redis is down.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "portal_cache",
    }
}

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/access/"
# Reviewers land on the console instead (accounts/adapter.py).
REVIEW_LANDING_URL = "/review/"
ACCOUNT_ADAPTER = "accounts.adapter.AccountAdapter"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]

# --- Sign-up and login (django-allauth) -------------------------------------------------
# Email is the login; every address must be verified before the account can sign in.
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[LLaMA access] "
ACCOUNT_PRESERVE_USERNAME_CASING = False
# Throttling of failed logins (counted in the cache, i.e. the database): per IP and per address.
ACCOUNT_RATE_LIMITS = {
    "login_failed": env_str("ACCOUNT_LOGIN_FAILED_RATE", "20/m/ip,5/300s/key"),
}

# --- Researcher access ------------------------------------------------------------------
ACCESS_USE_CASE_MIN_CHARS = env_int("ACCESS_USE_CASE_MIN_CHARS", 200)
ACCESS_GRANT_EXPIRY_NOTICE_DAYS = env_int("ACCESS_GRANT_EXPIRY_NOTICE_DAYS", 14)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(VAR_DIR / "staticfiles")))
# Production serves hashed, compressed files collected by `collectstatic`; development and
# tests serve straight from the source folders.
_STATIC_MANIFEST = env_bool("DJANGO_STATICFILES_MANIFEST", not DEBUG)
WHITENOISE_USE_FINDERS = not _STATIC_MANIFEST
WHITENOISE_AUTOREFRESH = not _STATIC_MANIFEST
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if _STATIC_MANIFEST
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- Email ----------------------------------------------------------------------------
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "LLaMA access portal <noreply@localhost>")

# --- Security -------------------------------------------------------------------------
# Off in development (plain http on localhost); on by default as soon as DEBUG is off.
_secure = not DEBUG
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", _secure)
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", _secure)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", _secure)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31536000 if _secure else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", _secure)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", _secure)
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", _secure):
    # Behind a TLS-terminating proxy (compose, a load balancer) that sets this header.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env_int("DJANGO_SESSION_COOKIE_AGE", 60 * 60 * 24 * 14)

# Content Security Policy (django-csp): only our own scripts and styles, no inline script.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
        "base-uri": ["'self'"],
    }
}

# --- Redis and Celery -----------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6390/0")
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None  # the database is the record of every job, not Redis
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 600)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 660)
# Must stay above the hard time limit, or Redis hands a running task to a second worker.
CELERY_BROKER_VISIBILITY_TIMEOUT = env_int("CELERY_BROKER_VISIBILITY_TIMEOUT", 900)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_BROKER_VISIBILITY_TIMEOUT,
    # Fail fast when Redis is down instead of hanging a web request.
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Periodic tasks. Each is idempotent, so a missed or doubled run does no harm.
CELERY_BEAT_SCHEDULE = {
    "accounts.grants_expire": {"task": "accounts.grants_expire", "schedule": 15 * 60},
    "accounts.grants_notify_expiring": {
        "task": "accounts.grants_notify_expiring",
        "schedule": 6 * 60 * 60,
    },
}
HEALTHZ_WORKER_TIMEOUT = env_float("HEALTHZ_WORKER_TIMEOUT", 1.0)
# How often each worker says which queues it consumes (core/workers.py); a killed worker's
# sizes show as not served after three periods.
WORKER_PRESENCE_SECONDS = env_float("WORKER_PRESENCE_SECONDS", 2.0)

# --- Audit log ----------------------------------------------------------------------------
# Keys of the audit log's keyed hash (HMAC-SHA256) as "id:secret" pairs, newest first: new
# entries are signed with the first, and every listed key still verifies what it signed.
# Rotate by putting a new pair in front and keeping the old ones. The database never holds
# them, so someone with only database access cannot re-sign an edited entry. Empty: one key
# derived from DJANGO_SECRET_KEY (id "secret-key"), which then must never change.
AUDIT_KEYS = env_list("AUDIT_KEYS", [])
# The chain's head (sequence number, hash) is written to this S3 object and to the log
# ("portal.audit") this often, so that `verify_audit` finds truncation and re-chaining.
AUDIT_ANCHOR_OBJECT = env_str("AUDIT_ANCHOR_OBJECT", "audit/head.json")
AUDIT_ANCHOR_SECONDS = env_int("AUDIT_ANCHOR_SECONDS", 60)
CELERY_BEAT_SCHEDULE["accounts.audit_anchor"] = {
    "task": "accounts.audit_anchor",
    "schedule": AUDIT_ANCHOR_SECONDS,
    "options": {"queue": "default", "expires": AUDIT_ANCHOR_SECONDS},
}

# --- S3 -------------------------------------------------------------------------------
S3_ENDPOINT_URL = env_str("S3_ENDPOINT_URL", "http://127.0.0.1:8333")
S3_ACCESS_KEY_ID = env_str("S3_ACCESS_KEY_ID", "portal-dev")
S3_SECRET_ACCESS_KEY = env_str("S3_SECRET_ACCESS_KEY", "portal-dev-secret")
S3_REGION = env_str("S3_REGION", "us-east-1")
S3_BUCKET = env_str("S3_BUCKET", "llama-weights")
S3_ADDRESSING_STYLE = env_str("S3_ADDRESSING_STYLE", "path")
S3_CONNECT_TIMEOUT = env_float("S3_CONNECT_TIMEOUT", 2.0)
S3_READ_TIMEOUT = env_float("S3_READ_TIMEOUT", 30.0)

# --- Weight distribution ----------------------------------------------------------------
# A download link (/dl/<id>) lives this long and may be used this many times; each use
# redirects to an S3 URL signed for WEIGHTS_PRESIGN_SECONDS only. That URL is a bearer
# credential nobody can revoke (a revoked grant stops /dl/, not a URL already handed out),
# so it lives no longer than a client needs to start its next request: portal-client
# fetches a fresh one through /dl/ before its URL nears the end, download.sh on each
# (re)try, and S3 lets a request that started in time finish.
WEIGHTS_LINK_SECONDS = env_int("WEIGHTS_LINK_SECONDS", 24 * 60 * 60)
WEIGHTS_LINK_MAX_USES = env_int("WEIGHTS_LINK_MAX_USES", 20)
WEIGHTS_PRESIGN_SECONDS = env_int("WEIGHTS_PRESIGN_SECONDS", 2 * 60)
# publish_weights holds about one part in memory (plus one copy while it is sent).
WEIGHTS_UPLOAD_PART_SIZE = env_int("WEIGHTS_UPLOAD_PART_SIZE", 64 * 1024 * 1024)

# --- Review console -------------------------------------------------------------------
# A submitted application older than this many days is marked overdue in the queue.
REVIEW_SLA_DAYS = env_int("REVIEW_SLA_DAYS", 7)
# ISO 3166 alpha-2 codes whose applications are flagged for a closer look (e.g. "KP,IR").
REVIEW_RESTRICTED_COUNTRIES = [c.upper() for c in env_list("REVIEW_RESTRICTED_COUNTRIES", [])]
# Free webmail domains beyond the built-in list (review/flags.py).
REVIEW_WEBMAIL_DOMAINS = [d.lower() for d in env_list("REVIEW_WEBMAIL_DOMAINS", [])]
# A rejection within this many days flags the next application of the same account.
REVIEW_RECENT_REJECTION_DAYS = env_int("REVIEW_RECENT_REJECTION_DAYS", 180)
# Flag an IP address once this many accounts submitted or accepted the license from it.
REVIEW_SHARED_IP_ACCOUNTS = env_int("REVIEW_SHARED_IP_ACCOUNTS", 2)
# Near-duplicate use cases: shingled Jaccard similarity at or above this, compared with the
# latest REVIEW_DUPLICATE_CANDIDATES applications of other accounts (bounded cost).
REVIEW_DUPLICATE_THRESHOLD = env_float("REVIEW_DUPLICATE_THRESHOLD", 0.5)
REVIEW_DUPLICATE_CANDIDATES = env_int("REVIEW_DUPLICATE_CANDIDATES", 500)

# --- Generation jobs ------------------------------------------------------------------
# Workers keep each size's checkpoint here, filled from S3 with SHA-256 verification.
JOBS_MODEL_CACHE_DIR = Path(env_str("JOBS_MODEL_CACHE_DIR", str(VAR_DIR / "models")))
JOBS_DEVICE = env_str("JOBS_DEVICE", "auto")  # auto: CUDA when the worker has it, else CPU
# The worker's weights and activations (inference.llama.engine.DTYPES, "auto": float32 on
# the CPU, bfloat16 or float16 on a GPU) and weight quantization ("int8": weight-only int8,
# a scale per 32 input columns, about half the memory of float16; "q8_0": the same weights
# with activations rounded to int8 per 32 as llama.cpp's Q8_0, faster on the CPU, its logits
# llama.cpp's q8_0's rather than int8's; "none" or empty: none).
# Per size, "65b:bfloat16" pairs override them. An unknown value stops the process here.
JOBS_DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16", "half")
JOBS_QUANTIZE_MODES = ("none", "int8", "q8_0")
JOBS_DTYPE = env_choice("JOBS_DTYPE", "auto", JOBS_DTYPES)
JOBS_QUANTIZE = env_choice("JOBS_QUANTIZE", "none", JOBS_QUANTIZE_MODES).replace("none", "")
JOBS_DTYPE_SIZES = env_size_choices("JOBS_DTYPE_SIZES", JOBS_DTYPES)
JOBS_QUANTIZE_SIZES = {
    slug: mode.replace("none", "")
    for slug, mode in env_size_choices("JOBS_QUANTIZE_SIZES", JOBS_QUANTIZE_MODES).items()
}
# CPU threads of each worker process's torch (0: torch's default, one per core). On a CPU
# host shared with the web and the database, fewer threads than cores avoid oversubscription.
JOBS_TORCH_THREADS = env_int("JOBS_TORCH_THREADS", 0)
# Sequences one worker process decodes together (continuous batching).
JOBS_MAX_BATCH_SIZE = env_int("JOBS_MAX_BATCH_SIZE", 8)
# Tensor-parallel ranks per size, "33b:4,65b:8": the worker of such a queue drives that
# many processes (one GPU each; gloo processes on the CPU). A size not named: on GPUs, as
# many ranks as its shards and the visible GPUs allow; on the CPU, one process.
JOBS_TP_SIZES = env_ranks("JOBS_TP_SIZES")
# A collective of a tensor-parallel group (and its start) that takes longer than this
# means a rank hangs or died: the batch is handed back and the group restarted.
JOBS_TP_TIMEOUT_SECONDS = env_float("JOBS_TP_TIMEOUT_SECONDS", 120.0)
# Deliveries of one job before it is failed instead of retried (a job that kills its
# worker, e.g. out of GPU memory, must not loop).
JOBS_MAX_ATTEMPTS = env_int("JOBS_MAX_ATTEMPTS", 3)
# Per-user limits: jobs queued or running at once, and tokens (prompt + completion) per
# rolling 24 hours.
JOBS_MAX_ACTIVE_PER_USER = env_int("JOBS_MAX_ACTIVE_PER_USER", 4)
JOBS_TOKENS_PER_DAY = env_int("JOBS_TOKENS_PER_DAY", 200_000)
JOBS_MAX_NEW_TOKENS = env_int("JOBS_MAX_NEW_TOKENS", 1024)
JOBS_MAX_SEQUENCES = env_int("JOBS_MAX_SEQUENCES", 16)  # prompts x n in one job
JOBS_MAX_PROMPT_CHARS = env_int("JOBS_MAX_PROMPT_CHARS", 100_000)
# Time limits of one generation task (the broker's visibility timeout must stay above).
JOBS_SOFT_TIME_LIMIT = env_int("JOBS_SOFT_TIME_LIMIT", CELERY_TASK_SOFT_TIME_LIMIT)
JOBS_TIME_LIMIT = env_int("JOBS_TIME_LIMIT", CELERY_TASK_TIME_LIMIT)
# A running job's worker writes a heartbeat (and reads the cancel flags) this often; one
# older than JOBS_STALE_SECONDS means the worker died and the sweep takes the job back.
JOBS_HEARTBEAT_SECONDS = env_float("JOBS_HEARTBEAT_SECONDS", 1.0)
JOBS_STALE_SECONDS = env_int("JOBS_STALE_SECONDS", 60)
# A job queued this long gets its queue message sent again (Redis may have lost it).
JOBS_RESEND_SECONDS = env_int("JOBS_RESEND_SECONDS", 300)
# Queued jobs of a size that no live worker serves fail after this long, saying why.
JOBS_WORKER_WAIT_SECONDS = env_int("JOBS_WORKER_WAIT_SECONDS", 600)
# A job queued this long is failed: no worker serves its size.
JOBS_QUEUED_EXPIRE_SECONDS = env_int("JOBS_QUEUED_EXPIRE_SECONDS", 6 * 60 * 60)
# The sweep is a few indexed queries; running it often is what makes recovery take seconds
# (a job whose message could not be sent goes out at the first sweep after Redis is back).
JOBS_SWEEP_SECONDS = env_int("JOBS_SWEEP_SECONDS", 10)
# How long the token stream of a job is kept in Redis for late readers.
JOBS_STREAM_TTL_SECONDS = env_int("JOBS_STREAM_TTL_SECONDS", 3600)
# How long a non-streaming OpenAI-style request waits for its job before giving up.
JOBS_SYNC_WAIT_SECONDS = env_int("JOBS_SYNC_WAIT_SECONDS", 300)
# Slows every decode step down (seconds): demos of streaming and tests that must catch a
# job in the middle. Leave at 0 in production.
JOBS_STEP_DELAY_SECONDS = env_float("JOBS_STEP_DELAY_SECONDS", 0.0)

# Re-queue or fail jobs whose worker died; re-send messages Redis may have lost.
CELERY_BEAT_SCHEDULE["inference.jobs_sweep_stuck"] = {
    "task": "inference.jobs_sweep_stuck",
    "schedule": JOBS_SWEEP_SECONDS,
    "options": {"queue": "default", "expires": JOBS_SWEEP_SECONDS},
}

# --- Evaluations run by the portal (evaluations/) ---------------------------------------
# A researcher's tasks (staff: no limit), and the size of one task file.
EVAL_TASKS_PER_USER = env_int("EVAL_TASKS_PER_USER", 20)
EVAL_TASK_MAX_ITEMS = env_int("EVAL_TASK_MAX_ITEMS", 5000)
EVAL_TASK_MAX_BYTES = env_int("EVAL_TASK_MAX_BYTES", 5 * 1024 * 1024)
EVAL_ACTIVE_PER_USER = env_int("EVAL_ACTIVE_PER_USER", 2)
# Scoring jobs in flight per evaluation, and the tokens of one (in full contexts).
EVAL_MAX_OUTSTANDING_JOBS = env_int("EVAL_MAX_OUTSTANDING_JOBS", 4)
EVAL_CHUNK_CONTEXTS = env_int("EVAL_CHUNK_CONTEXTS", 16)
# Failed scoring jobs (not cancelled ones) after which an evaluation fails (resumable).
EVAL_MAX_FAILED_JOBS = env_int("EVAL_MAX_FAILED_JOBS", 3)
EVAL_SWEEP_SECONDS = env_int("EVAL_SWEEP_SECONDS", 5)
CELERY_BEAT_SCHEDULE["evaluations.sweep"] = {
    "task": "evaluations.sweep",
    "schedule": EVAL_SWEEP_SECONDS,
    "options": {"queue": "default", "expires": EVAL_SWEEP_SECONDS},
}

# --- REST framework -------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "core.negotiation.StrictContentNegotiation",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LLaMA research access portal API",
    "DESCRIPTION": "Generation jobs, models and downloads for approved researchers.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI is served from the vendored sidecar package: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Every operation's error answers, stated by rule (inference/schema.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "inference.schema.document_error_responses",
    ],
}

# --- Logging --------------------------------------------------------------------------
LOG_LEVEL = env_str("DJANGO_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "core.logging.RedactSecretsFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "django.server": {
            "()": "django.utils.log.ServerFormatter",
            "format": "[{server_time}] {message}",
            "style": "{",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]},
        # The development server's access log (Django's own handler, which does not
        # propagate to the root): its request lines carry query strings, so it is redacted
        # like every other line.
        "django.server": {
            "class": "logging.StreamHandler",
            "formatter": "django.server",
            "filters": ["redact"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"handlers": ["django.server"], "level": "INFO", "propagate": False},
        # Every audit append and anchor, whatever the level: a copy of the chain's head
        # outside the database.
        "portal.audit": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # botocore logs request URLs (with signatures) at DEBUG: keep it quiet whatever the level.
        "botocore": {"level": "WARNING"},
        "boto3": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
    },
}
