"""A TCP proxy that can refuse WebSocket upgrades: a proxy or firewall that passes HTTP only."""

from __future__ import annotations

import socket
import threading

from tests.blackhole import BlackholeProxy, _Pair

REFUSAL = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class UpgradeGate(BlackholeProxy):
    """While `blocked` is set, a connection whose request asks for `Upgrade: websocket` is
    answered 403 and closed; everything else (and every upgrade once `blocked` is cleared) is
    passed through to the target port."""

    def __init__(self, target_port: int) -> None:
        self.blocked = threading.Event()
        super().__init__(target_port)

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._gate, args=(client,), daemon=True).start()

    def _gate(self, client: socket.socket) -> None:
        head = b""
        client.settimeout(10)
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = client.recv(65536)
                if not chunk:
                    client.close()
                    return
                head += chunk
            if self.blocked.is_set() and b"upgrade: websocket" in head.lower():
                client.sendall(REFUSAL)
                client.close()
                return
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            upstream.settimeout(None)
            upstream.sendall(head)
        except OSError:
            client.close()
            return
        pair = _Pair(client, upstream)
        with self.lock:
            self.pairs.append(pair)
            self.accepted += 1
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(pair, source, sink), daemon=True).start()
