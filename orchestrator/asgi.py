"""ASGI entry point: HTTP through Django (and /mcp/ through the MCP server), WebSockets
through Channels.

WebSockets open only from the site's own origins (dashboard/origins.py) and carry
the Django session user, so consumers can refuse anonymous connections.
"""

from __future__ import annotations

import os
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from orchestrator.core.request_threads import request_thread

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
# The web server runs each request in a thread of its own: it keeps a connection
# pool (orchestrator.config). Must be set before the settings are read.
os.environ.setdefault("ORCHESTRATOR_DB_POOL", "1")


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler, with the middleware chain and the view run in one thread hop.

    Every view here is synchronous (the services are), and Django's built-in
    middleware run their hooks through ``sync_to_async`` one at a time when the
    chain is loaded in async mode: about 15 hand-offs to a worker thread per
    request. This handler loads the chain in sync mode, as under WSGI, and runs
    it whole in the request's thread; Django's ASGI handling around it (reading
    the body, the request signals, disconnects, sending) is unchanged. An async
    view would still work (Django runs it with ``async_to_sync``), at the cost
    of hops of its own.

    Each request runs with a thread it can give back (core/request_threads.py): a
    long poll that waits holds no thread meanwhile (api/edge.py, ``long_poll_answer``).
    """

    def __init__(self) -> None:
        super(ASGIHandler, self).__init__()
        self.load_middleware(is_async=False)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)  # Django refuses it
        # As ASGIHandler.__call__, with the request's executor one it can give back.
        async with request_thread():
            await self.handle(scope, receive, send)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


def django_application() -> OneHopASGIHandler:
    """What ``get_asgi_application()`` returns, with the one-hop handler."""
    django.setup(set_prefix=False)
    return OneHopASGIHandler()


# Django must be set up before importing anything that touches models.
django_asgi_app = django_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from orchestrator.dashboard.origins import SameOriginValidator  # noqa: E402
from orchestrator.mcp.asgi import with_mcp  # noqa: E402
from orchestrator.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": with_mcp(django_asgi_app),  # /mcp/: the MCP server (orchestrator/mcp)
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
