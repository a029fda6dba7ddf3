"""How calls reach the server: httpx (the clients' default), or the standard library.

The guard is a process started for every edit, and importing httpx takes longer
than the guard's whole budget on a slow machine (bench/guard.py), so it sends
its few requests over a plain socket instead (:class:`StdlibTransport`): same
calls, same replies.
"""

from __future__ import annotations

import contextlib
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
    """Blocking HTTP/1.1 calls over one kept-alive socket (TLS by ``ssl`` for https).

    For the guard, a process per edit: ``http.client`` imports the ``email`` package
    (and ``ssl``), which took a third of the guard's start (bench/guard.py). This
    speaks just what the API needs: a JSON request, and an answer with a
    Content-Length, chunked, or ended by the server closing the connection.
    """

    def __init__(self, base_url: str, token: str, timeout: float) -> None:
        self.base = api_base(base_url)
        parts = urlsplit(self.base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.netloc, self.prefix = parts.netloc, parts.path
        self.timeout = timeout
        self.headers = {**headers(token), "Host": self.netloc, "Accept": "application/json"}
        self.sock: Any = None
        self.reader: Any = None
        self.lock = threading.Lock()

    def _connect(self) -> None:
        import socket

        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.https:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self.sock, self.reader = sock, sock.makefile("rb")

    def send(self, call: Call) -> Reply:
        url = self.prefix + call.path
        if call.params:
            url += "?" + urlencode(call.params)
        body = b"" if call.json is None else json.dumps(call.json).encode()
        lines = [f"{call.method} {url} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if call.json is not None:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        # A kept-alive connection the server has closed fails before anything is read;
        # only a request that is safe to send twice is sent again on a new one.
        retry = call.method in ("GET", "DELETE")
        with self.lock:
            while True:
                reused = self.sock is not None
                try:
                    if self.sock is None:
                        self._connect()
                    self.sock.settimeout(call.timeout or self.timeout)
                    self.sock.sendall(request)
                    return self._answer()
                except (_Closed, ConnectionResetError, BrokenPipeError) as exc:
                    self.close()
                    if not (reused and retry):
                        raise unreachable(exc, self.base) from exc
                    retry = False
                except (OSError, ValueError) as exc:
                    self.close()
                    raise unreachable(exc, self.base) from exc

    def _answer(self) -> Reply:
        status_line = self.reader.readline(65537)
        if not status_line:
            raise _Closed("the server closed the connection")
        version, status, *_ = status_line.decode("latin-1").split(" ", 2)
        fields: dict[str, str] = {}
        while (line := self.reader.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        code = int(status)
        if code in (204, 304) or code < 200:
            data = b""  # no body, whatever the headers say
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            data = self._chunked()
        elif "content-length" in fields:
            data = self._exactly(int(fields["content-length"]))
        else:
            data = self.reader.read()  # until the server closes the connection
            fields["connection"] = "close"
        if fields.get("connection", "").lower() == "close" or version == "HTTP/1.0":
            self.close()
        return Reply(code, parse_body(fields.get("content-type", ""), data))

    def _exactly(self, size: int) -> bytes:
        data = self.reader.read(size)
        if len(data) != size:
            raise ValueError("the answer ended early")
        return data

    def _chunked(self) -> bytes:
        parts = []
        while size := int(self.reader.readline(65537).split(b";")[0].strip() or b"0", 16):
            parts.append(self._exactly(size))
            self.reader.readline()
        while self.reader.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailer fields
        return b"".join(parts)

    def close(self) -> None:
        if self.sock is not None:
            for part in (self.reader, self.sock):
                with contextlib.suppress(OSError):
                    part.close()
            self.sock = self.reader = None


class _Closed(ConnectionError):
    """The server closed a kept-alive connection before answering."""
