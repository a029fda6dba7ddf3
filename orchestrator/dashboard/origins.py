"""The WebSocket handshake's Origin check: only the site's own pages may open a socket.

A browser sends the session cookie with any WebSocket handshake, whichever page
asks for it, so the Origin header is what keeps another site's page from reading
the live feed as the signed-in operator (cross-site WebSocket hijacking). An
origin is accepted when its scheme, host and port are

* the request's own: the scheme that matches the socket's (``http`` for ``ws``,
  ``https`` for ``wss``), the Host header's name and port (default ports
  filled in), with that host one of ALLOWED_HOSTS, as Django checks it for
  pages (so a DNS-rebound name is refused here as it is there); or
* an entry of CSRF_TRUSTED_ORIGINS (``https://*.example.com`` for a domain and
  its subdomains, as Django reads it), which is how a site behind a TLS
  proxy, whose sockets arrive as ``ws``, names its public ``https`` origin.

Anything else, a missing Origin included, closes the socket before the
handshake completes (daphne answers the upgrade with 403).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}
PAGE_SCHEME = {"ws": "http", "wss": "https"}  # the pages' scheme for a socket's

Origin = tuple[str, str, int]  # scheme, host (lower case, IPv6 without brackets), port


def parse_origin(text: str) -> Origin | None:
    """``scheme://host[:port]`` as (scheme, host, port), default port filled in; None for
    anything else (``null``, other schemes, a path, credentials, a bad port)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if (
        parts.scheme not in DEFAULT_PORTS
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return None
    return parts.scheme, parts.hostname, DEFAULT_PORTS[parts.scheme] if port is None else port


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin1")
    return None


def _allowed_hosts() -> list[str]:
    # What Django's HttpRequest.get_host() allows.
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


def own_origin(scope: dict[str, Any]) -> Origin | None:
    """The origin of the site's own pages for this handshake, from its scheme and its
    Host header; None without a Host header or when the host is not allowed."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    scheme = PAGE_SCHEME.get(scope.get("scheme", "ws"))
    return None if scheme is None else parse_origin(f"{scheme}://{host}")


def _trusted(origin: Origin, entries: Iterable[str]) -> bool:
    scheme, host, port = origin
    for entry in entries:
        wildcard = "://*." in entry
        trusted = parse_origin(entry.replace("://*.", "://", 1) if wildcard else entry)
        if trusted is None or trusted[0] != scheme or trusted[2] != port:
            continue
        if host == trusted[1] or (wildcard and is_same_domain(host, f".{trusted[1]}")):
            return True
    return False


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether the handshake in ``scope`` comes from one of the site's own origins
    (see the module docstring)."""
    text = _header(scope, b"origin")
    # Browsers send Origin with every WebSocket handshake; only other programs leave it
    # out, and they could send any Origin they liked. Refusing them costs nothing and
    # keeps the rule free of an exception that a browser could ever fall into.
    origin = parse_origin(text) if text is not None else None
    if origin is None:
        return False
    return origin == own_origin(scope) or _trusted(origin, settings.CSRF_TRUSTED_ORIGINS)


class SameOriginValidator:
    """ASGI middleware for WebSocket routes: the inner application sees only handshakes
    whose Origin :func:`origin_allowed` accepts; the others are closed at once."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator guards WebSocket connections only")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
