"""Django settings, read from the environment in one place.

Every setting a deployment may change is an environment variable (see README's table and
`.env.example`). Nothing here writes files or opens connections at import time.
Embedded default: SQLite and kombu's filesystem broker under ``var/``; with ``DATABASE_URL`` and
``CELERY_BROKER_URL`` set, PostgreSQL and Redis.
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import environ

from workers.engine.core.settings import PROJECT_ROOT, EngineSettings, project_path, var_dir
from workers.lanes import task_routes as lane_task_routes

BASE_DIR = PROJECT_ROOT

env = environ.Env()

# Relative paths in the environment are taken from the project root, as the engine takes them.
VAR_DIR = var_dir()

DEBUG = env.bool("DJANGO_DEBUG", default=False)
RIS_ENV = env.str("RIS_ENV", default="development")  # development | production
_INSECURE_KEY = "insecure-development-key-change-me"
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default=_INSECURE_KEY)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

if RIS_ENV == "production":
    from django.core.exceptions import ImproperlyConfigured

    if DEBUG:
        raise ImproperlyConfigured("RIS_ENV=production refuses to start with DJANGO_DEBUG on.")
    if SECRET_KEY == _INSECURE_KEY or len(SECRET_KEY) < 32:
        raise ImproperlyConfigured(
            "RIS_ENV=production needs DJANGO_SECRET_KEY set to a secret of at least 32 characters."
        )
    SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# Browsers keep to HTTPS for this long once they saw the header over HTTPS (SecurityMiddleware sends it on
# secure requests only, so a plain-HTTP deployment is unaffected). Behind a TLS proxy set
# DJANGO_TRUST_X_FORWARDED_PROTO so Django sees those requests as secure.
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=31_536_000 if RIS_ENV == "production" else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=False)
if env.bool("DJANGO_TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Content-Security-Policy of every response (server.config.security): the pages load scripts, styles and
# images from this origin only, and JSON from this origin only. Empty turns the header off.
RIS_CSP_DEFAULT = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
RIS_CSP = env.str("RIS_CSP", default=RIS_CSP_DEFAULT if RIS_ENV == "production" else "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "axes",
    "server.ris",
    "server.benchmarks",
    "server.web",
    # Management commands that drive the engine (models, benchmark). Django loads a command's
    # module only when it runs, so the web process never imports torch.
    "workers.cli",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "server.config.security.RejectNulInQueryMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "server.ris.middleware.DatabaseUnavailableMiddleware",
    "server.config.security.ContentSecurityPolicyMiddleware",
    # Last: turns a sign-in refused for too many wrong passwords into a 429 (server.config.security).
    "axes.middleware.AxesMiddleware",
]

# Wrong passwords (sign-in page, admin, token endpoint) are counted per account and per address by
# django-axes; after RIS_SIGNIN_FAILURE_LIMIT of either, sign-in is refused for RIS_SIGNIN_COOLOFF_MINUTES
# (429), even with the right password. A successful sign-in clears that account's count.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("RIS_SIGNIN_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("RIS_SIGNIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "server.config.security.lockout_response"
AXES_VERBOSE = False

ROOT_URLCONF = "server.config.urls"
WSGI_APPLICATION = "server.config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "frontend" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "server.web.context_processors.model_profile",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
# Persistent connections in production (a new PostgreSQL connection costs more CPU than a short request);
# health checks drop a connection the server closed before a request uses it.
DATABASES["default"].setdefault(
    "CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=600 if RIS_ENV == "production" else 0)
)
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Web server and worker share the file: wait for the lock instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "frontend" / "static"]
STATIC_ROOT = project_path(env.str("RIS_STATIC_ROOT", default=str(VAR_DIR / "static")))
# Serve straight from frontend/static when collectstatic has not run (development and tests).
WHITENOISE_USE_FINDERS = env.bool("RIS_STATIC_FROM_SOURCE", default=not STATIC_ROOT.exists())
if WHITENOISE_USE_FINDERS and not STATIC_ROOT.exists():
    # WhiteNoise warns "No directory at: var/static/" although the files are served from source on purpose.
    warnings.filterwarnings("ignore", message="No directory at")
MEDIA_URL = "/media/"
MEDIA_ROOT = project_path(env.str("RIS_MEDIA_ROOT", default=str(VAR_DIR / "media")))

# Images are read and written through Django's storage API by key, so a worker on another machine
# reads them from a shared volume or S3-compatible storage (RIS_STORAGE=s3, django-storages).
_STORAGE_BACKEND = env.str("RIS_STORAGE", default="filesystem")
STORAGES = {
    "default": (
        {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {}}
        if _STORAGE_BACKEND == "s3"
        else {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    ),
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
AWS_STORAGE_BUCKET_NAME = env.str("RIS_S3_BUCKET", default="")
AWS_S3_ENDPOINT_URL = env.str("RIS_S3_ENDPOINT_URL", default=None)

# Mail: EMAIL_URL (an smtp://, smtp+tls:// or consolemail:// URL, see django-environ) turns on password reset;
# without it the reset pages do not exist (nothing could be sent).
if env.str("EMAIL_URL", default=""):
    vars().update(env.email_url("EMAIL_URL"))
    DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="webmaster@localhost")
    RIS_PASSWORD_RESET = True
else:
    RIS_PASSWORD_RESET = False

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# Uploads
RIS_MAX_UPLOAD_BYTES = env.int("RIS_MAX_UPLOAD_BYTES", default=50 * 1024 * 1024)
RIS_MAX_IMAGE_PIXELS = env.int("RIS_MAX_IMAGE_PIXELS", default=50_000_000)
RIS_MAX_IMAGE_SIDE = env.int("RIS_MAX_IMAGE_SIDE", default=20_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = RIS_MAX_UPLOAD_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = env.int("RIS_MAX_FILES_PER_REQUEST", default=500)
RIS_MAX_ZIP_MEMBERS = env.int("RIS_MAX_ZIP_MEMBERS", default=2000)
RIS_MAX_ZIP_UNCOMPRESSED_BYTES = env.int("RIS_MAX_ZIP_UNCOMPRESSED_BYTES", default=1024**3)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "server.ris.api.authentication.CachedTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {
        "job_create": env.str("RIS_JOB_RATE", default="600/minute"),
        "refine": env.str("RIS_REFINE_RATE", default="240/minute"),
    },
    "EXCEPTION_HANDLER": "server.ris.api.errors.exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "server.ris.api.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
}
# Seconds a token's user is kept in the cache (server.ris.api.authentication); 0 reads it on every request.
RIS_TOKEN_CACHE_SECONDS = env.int("RIS_TOKEN_CACHE_SECONDS", default=30)
# Deepest JSON nesting a request body or an uploaded JSON file may have (server.ris.jsonlimits).
RIS_MAX_JSON_DEPTH = env.int("RIS_MAX_JSON_DEPTH", default=32)
SPECTACULAR_SETTINGS = {
    "TITLE": "RIS annotate API",
    "DESCRIPTION": "Upload images, ask referring expressions, read ranked candidate masks (COCO RLE), review.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
}

CACHES = {
    "default": env.cache_url("RIS_CACHE_URL", default="locmemcache://"),
}

# Celery: the database row is the truth; a message carries only a job id.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
RIS_BROKER_DIR = project_path(env.str("RIS_BROKER_DIR", default=str(VAR_DIR / "broker")))
RIS_JOB_STALE_SECONDS = env.int("RIS_JOB_STALE_SECONDS", default=2400)
RIS_RECONCILE_INTERVAL = env.int("RIS_RECONCILE_INTERVAL", default=60)
RIS_JOB_MAX_ATTEMPTS = env.int("RIS_JOB_MAX_ATTEMPTS", default=3)  # jobs, refine requests and shards alike
RIS_REFINE_STALE_SECONDS = env.int("RIS_REFINE_STALE_SECONDS", default=300)
# Each new image is prepared (proposals, image features) by the background lane, one task per image.
RIS_PREPARE_ON_UPLOAD = env.bool("RIS_PREPARE_ON_UPLOAD", default=True)
# Background work yields (workers/tasks/yielding.py): between two units of work (a decoder batch, a crop, an
# encoder block) it pauses while an interactive job or a refine request is running, asking the database at
# most every RIS_BACKGROUND_YIELD_POLL_S; one pause lasts at most RIS_BACKGROUND_YIELD_MAX_S. A worker that
# consumes only the background lane also lowers its CPU priority by RIS_BACKGROUND_NICE (0: unchanged).
RIS_BACKGROUND_YIELD = env.bool("RIS_BACKGROUND_YIELD", default=True)
RIS_BACKGROUND_YIELD_POLL_S = env.float("RIS_BACKGROUND_YIELD_POLL_S", default=0.5)
RIS_BACKGROUND_YIELD_MAX_S = env.float("RIS_BACKGROUND_YIELD_MAX_S", default=120.0)
RIS_BACKGROUND_NICE = env.int("RIS_BACKGROUND_NICE", default=10)
# A person's Retry of a job older than this joins the background lane (a recent one keeps its lane).
RIS_RETRY_BACKGROUND_AFTER_S = env.int("RIS_RETRY_BACKGROUND_AFTER_S", default=1800)
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport, made to deliver in order (workers/broker_fs.py says what it fixes).
    CELERY_BROKER_TRANSPORT = "workers.broker_fs:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(RIS_BROKER_DIR / "queue"),
        "data_folder_out": str(RIS_BROKER_DIR / "queue"),
        "processed_folder": str(RIS_BROKER_DIR / "processed"),
        "control_folder": str(RIS_BROKER_DIR / "control"),
        "store_processed": False,
        # How often an idle worker lists its queue folder (kombu's default is 1 s, which a click waits
        # for on top of its 0.1 s of model time); a listing of a small folder costs microseconds.
        "polling_interval": env.float("RIS_BROKER_POLL_S", default=0.1),
    }
else:
    # An unacknowledged message goes back to the queue after the visibility timeout. It must outlast the
    # longest a live worker may hold a job (its hard time limit), or a second worker runs it too; a job
    # whose worker died is found sooner by the reconciler (no heartbeat for RIS_JOB_STALE_SECONDS).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": max(RIS_JOB_STALE_SECONDS, env.int("RIS_JOB_TIME_LIMIT", default=1900) + 60)
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_SOFT_TIME_LIMIT = env.int("RIS_JOB_SOFT_TIME_LIMIT", default=1800)
CELERY_TASK_TIME_LIMIT = env.int("RIS_JOB_TIME_LIMIT", default=1900)
CELERY_TASK_DEFAULT_QUEUE = "default"
# Task names are those the tasks had before workers/tasks/ became a package (queued messages survive an
# upgrade); server.ris.services.dispatch names them for the web process. Each model task goes to its
# lane's queue (interactive / background: workers/lanes.py, the one place routing is decided).
CELERY_TASK_ROUTES = {
    **lane_task_routes(),
    "workers.tasks.reconcile_jobs": {"queue": "default"},
}
CELERY_BEAT_SCHEDULE = {
    "reconcile-jobs": {"task": "workers.tasks.reconcile_jobs", "schedule": float(RIS_RECONCILE_INTERVAL)},
}

# Engine: one settings object, read from the environment by workers.engine.core.settings (the same object
# a worker and the management commands hand to the engine), so web and workers agree on the store and profile.
# Read its fields (RIS_ENGINE.model_dir, .profile, ...); there are no copies to drift apart.
RIS_ENGINE = EngineSettings.from_env()
RIS_DEFAULT_PIPELINE = env.str("RIS_DEFAULT_PIPELINE", default="global_local")
# Cost ceilings checked at the door (issue 15; docs/PERFORMANCE.md, "Bounded work and cancellation"): a job whose automatic-mask settings
# ask for more per image is refused with a 400 before any worker sees it. Defaults: SAM's densest single grid
# (64 x 64 = 4,096 prompts) four times over, and the whole image plus two layers of crops (1 + 4 + 16).
RIS_JOB_MAX_PROMPTS = env.int("RIS_JOB_MAX_PROMPTS", default=16_384)
RIS_JOB_MAX_EMBEDDINGS = env.int("RIS_JOB_MAX_EMBEDDINGS", default=21)
# A running benchmark whose command process sent no heartbeat for this long is shown as interrupted.
RIS_BENCHMARK_STALE_SECONDS = env.int("RIS_BENCHMARK_STALE_SECONDS", default=900)
RIS_CANDIDATES_KEPT = env.int("RIS_CANDIDATES_KEPT", default=10)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Expected refusals (a bad Host header, a malformed request) are one line each, no traceback.
    "filters": {"expected_errors": {"()": "server.config.logfilters.ExpectedErrorsOneLine"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["expected_errors"]}},
    "root": {"handlers": ["console"], "level": env.str("RIS_LOG_LEVEL", default="INFO")},
    # The hub client's HTTP library logs every request at INFO; model downloads show a progress bar instead.
    "loggers": {"httpx2": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}
