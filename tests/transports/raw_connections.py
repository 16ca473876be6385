"""Raw TCP connections that never become requests: idle ones and unfinished request heads.

Used by `tests/transports/test_connections.py`, and runnable on its own to measure how many
such connections a gateway still holds open after a while:

    python -m tests.transports.raw_connections --port 8000 --count 450 --wait 40
"""

from __future__ import annotations

import argparse
import socket
import time

PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
"""A request head that never ends (no blank line)."""


def connect(port: int, source: str = "127.0.0.1", payload: bytes = b"") -> socket.socket:
    """A TCP connection to the gateway on 127.0.0.1:`port` from `source` (any 127.0.0.x works
    on loopback), which sends `payload` and then nothing more."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    if payload:
        sock.sendall(payload)
    sock.setblocking(False)
    return sock


def is_open(sock: socket.socket) -> bool:
    """Whether the server still holds this connection: no end of stream and no reset yet.

    Whatever the server wrote (a 408 or 429 before closing) is read and dropped.
    """
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def received(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server writes until it closes the connection (within `timeout`)."""
    sock.setblocking(True)
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def open_connections(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """`count` connections, every other one idle and the rest stuck in a request head."""
    return [connect(port, source, PARTIAL_HEAD if n % 2 else b"") for n in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--count", type=int, default=450)
    parser.add_argument("--wait", type=float, default=40.0, help="seconds before counting")
    parser.add_argument("--source", default="127.0.0.1", help="local address to connect from")
    args = parser.parse_args()
    sockets: list[socket.socket] = []
    failed = 0
    for n in range(args.count):
        try:
            sockets.append(connect(args.port, args.source, PARTIAL_HEAD if n % 2 else b""))
        except OSError:
            failed += 1
    opened = sum(is_open(s) for s in sockets)
    print(f"connected {len(sockets)} of {args.count} ({failed} failed), {opened} open at once")
    time.sleep(args.wait)
    still = sum(is_open(s) for s in sockets)
    print(f"still open after {args.wait:g} s: {still} of {args.count}")
    for sock in sockets:
        sock.close()


if __name__ == "__main__":
    main()
