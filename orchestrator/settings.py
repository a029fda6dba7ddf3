"""Django settings. The environment is read once, by :mod:`orchestrator.config`."""

from __future__ import annotations

import os
from datetime import timedelta

from csp.constants import NONE, SELF, UNSAFE_INLINE

from orchestrator import config as _config

CONFIG = _config.load(os.environ)

BASE_DIR = _config.BASE_DIR
DEBUG = CONFIG.debug
SECRET_KEY = CONFIG.secret_key or _config.local_secret_key(CONFIG.data_dir)
ALLOWED_HOSTS = CONFIG.allowed_hosts
REDIS_URL = CONFIG.redis_url
DATA_DIR = CONFIG.data_dir
# The environment variables that agents' backend configs may name as their model's API
# key (api_key_env): ORCHESTRATOR_MODEL_KEY_ENVS, comma-separated (orchestrator/config.py).
ORCHESTRATOR_MODEL_KEY_ENVS = list(CONFIG.model_key_envs)
# Prometheus metrics at /metrics (orchestrator/core/metrics.py, docs/operations.md): off
# (404) unless ORCHESTRATOR_METRICS_TOKEN is set, then only with that bearer token. The
# processes of a host add up in PROMETHEUS_MULTIPROC_DIR (default DATA_DIR/metrics).
ORCHESTRATOR_METRICS_TOKEN = CONFIG.metrics_token
PROMETHEUS_MULTIPROC_DIR = CONFIG.metrics_dir
# Made now: prometheus_client opens its files there as soon as a metric exists, and
# django_rq's admin module makes one when the apps load, before ours.
PROMETHEUS_MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
# OpenTelemetry spans of agent steps, model calls and tool calls: ORCHESTRATOR_OTEL=1, with
# the otel extra installed (agents/tracing.py; the exporter reads the standard OTEL_* variables).
ORCHESTRATOR_OTEL = CONFIG.otel
# Long polls (API ?wait=, MCP waits) one agent may have waiting at once, counted on Redis
# across web processes; one more is refused with 429 too_many_waits (core/wakeups.py).
ORCHESTRATOR_MAX_WAITS_PER_AGENT = CONFIG.max_waits_per_agent

# Notifications (core/notifications.py, docs/notifications.md): the site's address that
# links in webhooks and e-mails start with, and Django's e-mail settings, read from the
# variables of the same names (SMTP when EMAIL_HOST is set, else the console).
ORCHESTRATOR_BASE_URL = CONFIG.base_url
EMAIL_BACKEND = CONFIG.email["EMAIL_BACKEND"]
EMAIL_HOST = CONFIG.email["EMAIL_HOST"]
EMAIL_PORT = CONFIG.email["EMAIL_PORT"]
EMAIL_HOST_USER = CONFIG.email["EMAIL_HOST_USER"]
EMAIL_HOST_PASSWORD = CONFIG.email["EMAIL_HOST_PASSWORD"]
EMAIL_USE_TLS = CONFIG.email["EMAIL_USE_TLS"]
EMAIL_USE_SSL = CONFIG.email["EMAIL_USE_SSL"]
EMAIL_TIMEOUT = CONFIG.email["EMAIL_TIMEOUT"]
DEFAULT_FROM_EMAIL = CONFIG.email["DEFAULT_FROM_EMAIL"]

# Production behind a TLS-terminating reverse proxy (HTTPS=1): secure cookies, HTTPS
# redirects (but not for /healthz, which load balancers ask over plain HTTP), HSTS,
# and the proxy's X-Forwarded-Proto trusted. `manage.py check --deploy` is clean.
if CONFIG.https:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = CONFIG.hsts_seconds
    CSRF_TRUSTED_ORIGINS = [f"https://{host}" for host in ALLOWED_HOSTS if host != "*"]
    # HSTS for this host only: an operator console usually lives on one subdomain of a
    # domain whose other hosts it does not own, so it must not impose HTTPS on them
    # (includeSubDomains) nor ask browsers to hard-code that (preload).
    SILENCED_SYSTEM_CHECKS = ["security.W005", "security.W021"]

INSTALLED_APPS = [
    # daphne first: its runserver replaces Django's and serves ASGI.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_rq",
    # Listed so that the API docs page serves Swagger UI from our static files, not a CDN.
    "ninja",
    "axes",
    "orchestrator.core",
    "agents",
    "orchestrator.dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every response, the admin's own under /admin/.
    "orchestrator.csp.SiteCSPMiddleware",
    # Sync, like every middleware here: orchestrator.asgi runs the whole chain and the
    # view in one worker thread per request (an async-only middleware, ServeStatic's,
    # split it in three and made Django hand each hook of the others to a thread).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]

# The pages run only the site's own static scripts and styles: nothing inline (agent text
# is set with textContent; what scripts style, they style through the CSSOM, which CSP
# allows). 'self' in connect-src covers the live feed's ws:/wss: socket to this host in
# CSP Level 3 browsers (tests/dashboard/test_browser.py checks it in Chromium). data:
# images: Swagger UI's stylesheet (the API docs page) draws some icons with them.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
# Under /admin/ (orchestrator/csp.py): django-rq's pages and Django's changelist carry
# inline style blocks. Scripts stay 'self' there too: django-rq's only inline scripts
# (its job lists' `$(...).actions()`) fail on this Django anyway, whose actions.js sets
# itself up, and a job's results rows still link without their onclick.
CONTENT_SECURITY_POLICY_ADMIN = {"style-src": [SELF, UNSAFE_INLINE]}

ROOT_URLCONF = "orchestrator.urls"
ASGI_APPLICATION = "orchestrator.asgi.application"
WSGI_APPLICATION = "orchestrator.wsgi.application"

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
                "orchestrator.dashboard.context.navigation",
            ],
        },
    },
]

# Without DATABASE_URL, the embedded PostgreSQL in DATA_DIR (orchestrator/embedded.py).
DATABASES = {"default": CONFIG.database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Sign-in lockout (django-axes): 5 failed attempts for one username from one address
# lock that pair out for 15 minutes (429 and a page saying so); a success resets
# the count. Behind the TLS proxy (HTTPS=1) the client address is the last hop of
# X-Forwarded-For, which nginx sets; otherwise only the socket's address counts,
# so a client cannot dodge the lockout by inventing X-Forwarded-For headers.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
if CONFIG.https:
    AXES_IPWARE_PROXY_COUNT = 1
    AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR")
else:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "login"
# A refused CSRF check answers JSON to fetch() callers and a page to browsers.
CSRF_FAILURE_VIEW = "orchestrator.dashboard.views.errors.csrf_failure"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# WhiteNoise serves static files from the web process: hashed, compressed files
# from STATIC_ROOT once `collectstatic` has run (production), otherwise straight
# from the app folders (a development checkout, the test suite).
STATIC_COLLECTED = (STATIC_ROOT / "staticfiles.json").exists()
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns about a missing root on every start
WHITENOISE_USE_FINDERS = not STATIC_COLLECTED
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if STATIC_COLLECTED
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Redis pub/sub layer, chosen by measurement (bench/live.py, docs/benchmarks.md): one
# PUBLISH per group_send however many browsers listen, lower latency, and no silent
# drops under load, where RedisChannelLayer dropped pushes past its capacity. Pushes
# are best effort either way: browsers replay what they missed from the event log.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # Derived from the database unless set: deployments sharing a Redis server
        # (on other database numbers) must not hear each other's pushes (config.py).
        "CONFIG": {"hosts": [REDIS_URL], "prefix": CONFIG.channel_prefix},
    },
}

RQ_QUEUES = {
    "steps": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},
}
# Jobs are enqueued only once the transaction that asked for them commits. Workers run
# jobs in their own process, keeping their database connection (agents/worker.py and
# the README explain the choice; --worker-class agents.worker.StepWorker forks).
RQ = {"COMMIT_MODE": "on_db_commit", "WORKER_CLASS": "agents.worker.SimpleStepWorker"}
RQ_SHOW_ADMIN_LINK = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO" if DEBUG else "WARNING"},
    "loggers": {"orchestrator": {"level": "INFO", "propagate": True}},
}
