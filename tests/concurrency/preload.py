"""Imported once by the fork server that starts worker processes (see processes.py).

Children are forked from that server, so the libraries imported here are
loaded once instead of once per child. Only modules that read no settings
belong here: the server has no Django settings, no connection and no thread;
each child still configures Django itself. A module that fails to import is
skipped: preloading is an optimization, never a requirement.
"""

from __future__ import annotations

import importlib

MODULES = (
    "django.db.models",
    "django.db.backends.postgresql.base",
    "django.http",
    "django.urls",
    "django.test",
    "django.core.serializers.json",
    "psycopg",
    "redis.asyncio",
    "channels_redis.core",
    "networkx",
    "pydantic",
    "rq",
    "twisted.internet.asyncioreactor",
    "twisted.internet.tcp",
    "autobahn.twisted.websocket",
)

for _name in MODULES:
    try:
        importlib.import_module(_name)
    except Exception:  # an optimization only, see the docstring
        continue
