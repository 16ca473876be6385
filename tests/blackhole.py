"""A TCP proxy on 127.0.0.1 whose open connections can be made to die silently.

`blackhole()` is a network path that goes dead without a FIN or an RST (a NAT or a mobile link
dropping state, a cable pulled): the proxy keeps both sockets open but stops reading and
forwarding, so neither the client nor the gateway hears anything, ever. Connections made after
it work normally, so a client that notices the dead link can reconnect through the same proxy.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class _Pair:
    """One proxied connection: the client's socket and the one to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.dead = threading.Event()
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.close()


class BlackholeProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.pairs: list[_Pair] = []
        self.lock = threading.Lock()
        self.stopped = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def blackhole(self) -> int:
        """Make every open connection go silent; returns how many there were."""
        with self.lock:
            live = [pair for pair in self.pairs if not pair.closed.is_set()]
        for pair in live:
            pair.dead.set()
        return len(live)

    def close(self) -> None:
        self.stopped = True
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            pair.close()

    def __enter__(self) -> BlackholeProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pair = _Pair(client, upstream)
            with self.lock:
                self.pairs.append(pair)
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(pair, source, sink), daemon=True).start()

    def _pump(self, pair: _Pair, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not pair.dead.is_set():
                data = source.recv(65536)
                if pair.dead.is_set():
                    break  # what arrived after the link died is lost, as on a dead path
                if not data:
                    pair.close()  # an ordinary close is passed on
                    return
                sink.sendall(data)
        except OSError:
            pair.close()
            return
        # Dead: hold both sockets open, read nothing and send nothing, until the test ends.
        pair.closed.wait()
