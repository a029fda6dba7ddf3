"""ASGI entry point: HTTP through Django, WebSockets through Channels.

WebSockets are checked against ALLOWED_HOSTS (Origin) and carry the Django
session user, so consumers can refuse anonymous connections.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
# The web server runs each request in a thread of its own: it keeps a connection
# pool (orchestrator.config). Must be set before the settings are read.
os.environ.setdefault("ORCHESTRATOR_DB_POOL", "1")
# Django must be set up before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from orchestrator.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
