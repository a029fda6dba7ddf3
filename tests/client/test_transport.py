"""The guard's HTTP over a plain socket (_transport.StdlibTransport), against a server
that answers what real servers may: a Content-Length, chunks, a body ended by closing
the connection, no body (204), and a kept-alive connection it has closed."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from orchestrator_client._ops import Call
from orchestrator_client._transport import StdlibTransport
from orchestrator_client.errors import Unreachable


class Canned:
    """A one-thread TCP server answering each request with the next canned answer (a
    connection is closed after an answer marked so, as a server that ends keep-alive)."""

    def __init__(self, answers: list[tuple[bytes, bool]]) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        with contextlib.suppress(OSError):  # the listener is closed when the test ends
            while self.answers:
                connection, _ = self.listener.accept()
                with connection, connection.makefile("rb") as reader:
                    self.answer(connection, reader)

    def answer(self, connection: socket.socket, reader) -> None:
        while self.answers:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline()
                if not line:
                    return
                head += line
            length = next(
                (int(h.split(b":")[1]) for h in head.split(b"\r\n")
                 if h.lower().startswith(b"content-length")), 0,
            )  # fmt: skip
            self.requests.append(head + reader.read(length))
            answer, close = self.answers.pop(0)
            connection.sendall(answer)
            if close:
                return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def canned() -> Iterator:
    servers: list[Canned] = []

    def start(*answers: tuple[bytes, bool]) -> tuple[StdlibTransport, Canned]:
        server = Canned(list(answers))
        servers.append(server)
        return StdlibTransport(f"http://127.0.0.1:{server.port}", "secret", 5), server

    yield start
    for server in servers:
        server.close()


JSON = b"Content-Type: application/json\r\n"
OK = b"HTTP/1.1 200 OK\r\n" + JSON + b"Content-Length: 2\r\n\r\n{}"


def test_length_chunks_close_and_no_body(canned):
    transport, _ = canned(
        (b"HTTP/1.1 201 Created\r\n" + JSON + b'Content-Length: 8\r\n\r\n{"id":1}', False),
        (b"HTTP/1.1 200 OK\r\n" + JSON + b"Transfer-Encoding: chunked\r\n\r\n"
         b'4\r\n{"a"\r\n3\r\n:2}\r\n0\r\n\r\n', False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False),
        (b"HTTP/1.1 409 Conflict\r\n" + JSON + b'Connection: close\r\n\r\n{"error":"busy"}', True),
    )  # fmt: skip
    assert transport.send(Call("POST", "/locks", json={"resource": "a"})) == (201, {"id": 1})
    assert transport.send(Call("GET", "/whoami")) == (200, {"a": 2})
    assert transport.send(Call("DELETE", "/locks/1")) == (204, None)
    assert transport.send(Call("PUT", "/resources/a")) == (409, {"error": "busy"})
    assert transport.sock is None  # closed, as the server said it would be


def test_a_request_carries_the_token_the_json_and_the_query(canned):
    transport, server = canned((OK, False))
    transport.send(Call("POST", "/locks", json={"resource": "src/a.py"}, params={"w": "1 2"}))
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/v1/locks?w=1+2 HTTP/1.1"
    assert b"Authorization: Bearer secret" in lines
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert b"Content-Type: application/json" in lines
    assert body == b'{"resource": "src/a.py"}'


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("DELETE", True), ("PUT", False)])
def test_a_kept_alive_connection_the_server_closed_is_retried_only_when_safe(
    canned, method, retried
):
    # The first answer keeps the connection alive, then the server closes it silently.
    transport, server = canned((OK, True), (OK, False))
    assert transport.send(Call("GET", "/whoami")).status == 200
    assert transport.sock is not None
    if retried:
        assert transport.send(Call(method, "/whoami")).status == 200
        assert len(server.requests) == 2
    else:
        with pytest.raises(Unreachable):
            transport.send(Call(method, "/whoami", json={"value": 1}))
        assert len(server.requests) == 1  # a write is never sent twice


def test_a_server_that_is_not_there_is_unreachable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = StdlibTransport(f"http://127.0.0.1:{port}", "t", 2)
    with pytest.raises(Unreachable):
        transport.send(Call("GET", "/whoami"))
