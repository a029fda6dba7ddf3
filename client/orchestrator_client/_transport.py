"""How calls reach the server: httpx (the clients' default), or the standard library.

The guard is a process started for every edit, and importing httpx takes longer
than the guard's whole budget on a slow machine (bench/guard.py), so it sends
its few requests with ``http.client`` instead: same calls, same replies.
"""

from __future__ import annotations

import http.client
import json
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from orchestrator_client._ops import Call, Reply
from orchestrator_client.errors import Unreachable

if TYPE_CHECKING:
    import httpx

API_PREFIX = "/api/v1"
USER_AGENT = "orchestrator-client/0.1"


def api_base(base_url: str) -> str:
    """``http://host:port`` (or a URL already ending in /api/v1) -> the API's base URL."""
    base = base_url.rstrip("/")
    return base if base.endswith(API_PREFIX) else base + API_PREFIX


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT}


def parse_body(content_type: str, data: bytes) -> Any:
    if not data:
        return None
    if content_type.split(";")[0].strip() == "application/json":
        try:
            return json.loads(data)
        except ValueError:
            pass
    return data.decode("utf-8", "replace")


def unreachable(exc: BaseException, base: str) -> Unreachable:
    return Unreachable(f"no answer from {base}: {type(exc).__name__}: {exc}")


class _Httpx:
    """What the httpx transports share: one client (``httpx.Client`` or ``AsyncClient``),
    and how a call's timeout and an answer are read."""

    client_class = ""

    def __init__(self, base_url: str, token: str, timeout: float) -> None:
        import httpx

        self.base = api_base(base_url)
        self.timeout = timeout
        self.http: Any = getattr(httpx, self.client_class)(
            base_url=self.base, headers=headers(token), timeout=timeout
        )

    def _timeout(self, call: Call) -> httpx.Timeout:
        import httpx

        return httpx.Timeout(self.timeout, read=call.timeout or self.timeout)

    @staticmethod
    def _reply(response: httpx.Response) -> Reply:
        content_type = response.headers.get("content-type", "")
        return Reply(response.status_code, parse_body(content_type, response.content))


class HttpxTransport(_Httpx):
    """Blocking calls through one ``httpx.Client`` (safe to share between threads)."""

    client_class = "Client"

    def send(self, call: Call) -> Reply:
        import httpx

        try:
            response = self.http.request(
                call.method, call.path, json=call.json, params=call.params,
                timeout=self._timeout(call),
            )  # fmt: skip
        except httpx.TransportError as exc:
            raise unreachable(exc, self.base) from exc
        return self._reply(response)

    def close(self) -> None:
        self.http.close()


class AsyncHttpxTransport(_Httpx):
    """The same calls through one ``httpx.AsyncClient``."""

    client_class = "AsyncClient"

    async def send(self, call: Call) -> Reply:
        import httpx

        try:
            response = await self.http.request(
                call.method, call.path, json=call.json, params=call.params,
                timeout=self._timeout(call),
            )  # fmt: skip
        except httpx.TransportError as exc:
            raise unreachable(exc, self.base) from exc
        return self._reply(response)

    async def close(self) -> None:
        await self.http.aclose()


class StdlibTransport:
    """Blocking calls over one kept-alive ``http.client`` connection."""

    def __init__(self, base_url: str, token: str, timeout: float) -> None:
        self.base = api_base(base_url)
        parts = urlsplit(self.base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.https = parts.scheme == "https"
        self.host, self.port, self.prefix = parts.hostname, parts.port, parts.path
        self.timeout = timeout
        self.headers = headers(token)
        self.connection: http.client.HTTPConnection | None = None
        self.lock = threading.Lock()

    def _connect(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def send(self, call: Call) -> Reply:
        url = self.prefix + call.path
        if call.params:
            url += "?" + urlencode(call.params)
        body = None if call.json is None else json.dumps(call.json).encode()
        sent_headers = dict(self.headers)
        if body is not None:
            sent_headers["Content-Type"] = "application/json"
        # A kept-alive connection the server has closed fails before anything is read;
        # only a request that is safe to send twice is sent again on a new one.
        retry = call.method in ("GET", "DELETE")
        with self.lock:
            while True:
                reused = self.connection is not None
                try:
                    return self._exchange(call.method, url, body, sent_headers, call.timeout)
                except (
                    http.client.RemoteDisconnected,
                    ConnectionResetError,
                    BrokenPipeError,
                ) as exc:
                    self.close()
                    if not (reused and retry):
                        raise unreachable(exc, self.base) from exc
                    retry = False
                except (OSError, http.client.HTTPException) as exc:
                    self.close()
                    raise unreachable(exc, self.base) from exc

    def _exchange(
        self, method: str, url: str, body: bytes | None, sent: dict[str, str], timeout: float | None
    ) -> Reply:
        connection = self.connection or self._connect()
        self.connection = connection
        connection.timeout = timeout or self.timeout
        if connection.sock is not None:
            connection.sock.settimeout(connection.timeout)
        connection.request(method, url, body=body, headers=sent)
        response = connection.getresponse()
        data = response.read()
        if response.will_close:
            self.close()
        return Reply(response.status, parse_body(response.getheader("Content-Type", ""), data))

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
