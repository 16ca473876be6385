"""A minimal HTTP/1.1 keep-alive client over one socket, one request at a time; `RawHTTPWave`
keeps several such connections with one request in flight on each.

The benchmark's load generator for `POST /jobs` and `POST /channels/{ch}/events`: a general
client (httpx) spends more CPU per request than the gateway does, so one producer process could
not offer the rates being measured. Only what the gateway answers is handled: a status line,
headers and a `Content-Length` body (no chunked encoding: the gateway's JSON answers carry a
length).
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


class RawHTTPError(RuntimeError):
    pass


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, content length, keep-alive) from a response head (up to the blank line)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise RawHTTPError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(parts[1])
    length = 0
    keep_alive = parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value.strip())
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            raise RawHTTPError("chunked responses are not supported")
        elif key == b"connection":
            keep_alive = value.strip().lower() != b"close"
    return status, length, keep_alive


class RawHTTP:
    """`post(path, body) -> (status, body)` on one keep-alive connection (reconnects if the
    server closes it)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._fixed = (
            f"Host: {self.host}:{self.port}\r\nContent-Type: application/json\r\n{extra}"
        ).encode()
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._buf = sock, b""
        return sock

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.send(path, body)
        return self.receive()

    def send(self, path: str, body: bytes) -> None:
        """Write one request; its answer is read by `receive`."""
        sock = self._sock or self._connect()
        request = (
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\n"
            + self._fixed
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        sock.sendall(request)

    def receive(self) -> tuple[int, bytes]:
        """(status, body) of the request `send` wrote."""
        sock = self._sock
        if sock is None:
            raise RawHTTPError("no request in flight")
        while b"\r\n\r\n" not in self._buf:
            self._recv(sock)
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        status, length, keep_alive = parse_head(head)
        while len(rest) < length:
            rest += self._recv_raw(sock)
        self._buf = rest[length:]
        if not keep_alive:
            self.close()
        return status, rest[:length]

    def _recv(self, sock: socket.socket) -> None:
        self._buf += self._recv_raw(sock)

    def _recv_raw(self, sock: socket.socket) -> bytes:
        chunk = sock.recv(262144)
        if not chunk:
            self.close()
            raise RawHTTPError("connection closed by the server mid-response")
        return chunk

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._buf = None, b""


class RawHTTPWave:
    """`post(path, body) -> [(status, body)]`: the same request on each of `connections`
    keep-alive connections, all written before any answer is read, so the server has that many
    requests in flight at once (as many concurrent clients would) for the CPU of one process."""

    def __init__(
        self, base_url: str, connections: int, headers: dict[str, str] | None = None
    ) -> None:
        self._clients = [RawHTTP(base_url, headers) for _ in range(connections)]

    def post(self, path: str, body: bytes) -> list[tuple[int, bytes]]:
        for client in self._clients:
            client.send(path, body)
        return [client.receive() for client in self._clients]

    def close(self) -> None:
        for client in self._clients:
            client.close()
