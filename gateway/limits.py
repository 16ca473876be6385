"""Rate and connection limits: token buckets keyed by who is asking, connection counts per address.

Kept in process memory: each gateway process limits what passes through it. That bounds the
damage one client can do to one process, which is what protects the other clients of that
process; a global quota across processes would cost a Redis round trip per message.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from gateway.settings import Settings


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; one token per action.

    A rate of 0 (or less) means no limit: the setting that turns the limit off.
    """

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float | None = None) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class KeyedRateLimiter:
    """One token bucket per key (API key, token, client), the least recently used forgotten
    first so that a flood of distinct keys cannot grow memory without bound."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """0.0 if `key` may act now, else the seconds to wait (for `Retry-After`)."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            stamp = time.monotonic() if now is None else now
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, stamp=stamp)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def bucket(self) -> TokenBucket:
        """A fresh bucket with this limiter's rate, for one connection."""
        return TokenBucket(self.rate, self.burst)


class ConnectionCounter:
    """Open connections per address, refused beyond `limit`: WebSocket/SSE streams per client
    (`Limits.connections`), TCP connections per peer (`ConnectionGate`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if self.limit > 0 and count >= self.limit:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def count(self, address: str) -> int:
        return self._open.get(address, 0)


class TrustedProxies:
    """The peers whose `X-Forwarded-For` is believed (`GATEWAY_TRUSTED_PROXIES`): addresses or
    networks. Anyone else can write any address into that header."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __contains__(self, host: str) -> bool:
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def peer_key(host: str) -> str:
    """What a peer's connections are counted under: its IPv4 address, or its IPv6 /64 (one
    subscriber line usually gets a whole /64, so single IPv6 addresses are free to vary)."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    if address.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


TCP_HEADROOM: Final = 16
"""TCP connections an address may hold beyond `GATEWAY_MAX_CONNECTIONS_PER_CLIENT` streams.

A WebSocket or SSE request over the streaming limit must still arrive, so that it is refused
in words a browser can read (close 1013 with a reason, a 429 problem) rather than with a TCP
close (a browser reports 1006 and nothing else); idle or unfinished connections stay bounded
at the limit plus this."""


def tcp_limit(streams: int) -> int:
    """The open TCP connections allowed per address for a streaming limit (0: no limit)."""
    return streams + TCP_HEADROOM if streams > 0 else 0


@dataclass(slots=True)
class ConnectionGate:
    """What the HTTP protocol checks for every TCP connection, before any request exists.

    Every connection counts against `counter` under its TCP peer's address (`peer_key`), and
    every new connection takes a token from that address's bucket in `rate`: a per-connection
    limit cannot stop a client that reconnects the moment it is cut (it opened hundreds of
    connections a second, each cut, and the setup of each costs the process as much as the
    flood it carried). Connections from trusted proxies are neither counted nor rated: those
    carry many clients, which the WebSocket/SSE count (`Limits.connections`) tells apart by
    their forwarded address instead. A connection must finish its request head within
    `header_timeout` seconds.
    """

    counter: ConnectionCounter
    trusted: TrustedProxies
    header_timeout: float
    rate: KeyedRateLimiter = field(default_factory=lambda: KeyedRateLimiter(0.0, 1.0))
    """New connections per second per address; a rate of 0 is no limit."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionGate:
        return cls(
            ConnectionCounter(tcp_limit(settings.max_connections_per_client)),
            TrustedProxies(settings.trusted_proxies),
            settings.header_timeout,
            KeyedRateLimiter(settings.connect_rate, settings.connect_burst),
        )

    def key_for(self, host: str) -> str | None:
        """The key a connection from `host` is counted under; `None` when it is not counted
        (no limit configured, or a trusted proxy)."""
        if self.counter.limit <= 0 or host in self.trusted:
            return None
        return peer_key(host)

    def admit(self, host: str, now: float | None = None) -> tuple[str | None, str | None]:
        """Let a new connection from `host` in: `(refusal, counted_as)`, where `refusal` is
        the metric reason it is turned away for (`rate`, `per_address`) or None, and
        `counted_as` the key to release when an admitted connection ends (None: uncounted).

        The rate is charged first, for every attempt: a client refused for its open count
        that keeps trying runs out of its rate too."""
        if (self.rate.rate <= 0 and self.counter.limit <= 0) or host in self.trusted:
            return None, None
        key = peer_key(host)
        if self.rate.take(key, now) > 0:
            return "rate", None
        if self.counter.limit <= 0:
            return None, None
        if not self.counter.acquire(key):
            return "per_address", None
        return None, key


class ReadBudget:
    """What one WebSocket connection may send: frames (control frames and fragments included)
    and bytes per second, each a token bucket holding one second's worth.

    Reading a frame costs the gateway CPU whatever the frame says (an empty ping is parsed and
    answered like any other), so a client sending them without pause would take the process
    from everyone else; over budget, the connection is closed. A rate of 0 means no limit.
    """

    __slots__ = ("byte_rate", "bytes", "frame_rate", "frames", "stamp")

    def __init__(self, frame_rate: float, byte_rate: float, now: float) -> None:
        self.frame_rate = frame_rate if frame_rate > 0 else math.inf
        self.byte_rate = byte_rate if byte_rate > 0 else math.inf
        self.frames = self.frame_rate
        self.bytes = self.byte_rate
        self.stamp = now

    @classmethod
    def from_settings(cls, settings: Settings, now: float) -> ReadBudget | None:
        """The budget `settings` give a connection, or None when both limits are off."""
        if settings.ws_read_frames <= 0 and settings.ws_read_bytes <= 0:
            return None
        return cls(settings.ws_read_frames, settings.ws_read_bytes, now)

    def refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.stamp = now
            if self.frames < self.frame_rate:
                self.frames = min(self.frame_rate, self.frames + elapsed * self.frame_rate)
            if self.bytes < self.byte_rate:
                self.bytes = min(self.byte_rate, self.bytes + elapsed * self.byte_rate)

    def spend_bytes(self, size: int) -> bool:
        """Take `size` bytes; False once the connection has sent more than it may."""
        self.bytes -= size
        return self.bytes >= 0

    def spend_frames(self, count: int) -> bool:
        """Take `count` frames; False once the connection has sent more than it may."""
        self.frames -= count
        return self.frames >= 0

    def frames_left(self) -> int:
        """Whole frames still allowed now (capped, so that "no limit" is a number too)."""
        return int(min(self.frames, 1 << 30))


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1, as `Retry-After` wants them."""
    return str(max(1, math.ceil(min(seconds, 86_400.0))))


def _default_limits() -> Limits:
    return Limits.from_settings(Settings())


@dataclass(slots=True)
class Limits:
    """The per-process limiters a gateway enforces, built from its settings (by default, from
    the settings' defaults: declared once, in `gateway.settings`)."""

    publish: KeyedRateLimiter = field(default_factory=lambda: _default_limits().publish)
    """Publishes per token (and per client address for token-less HTTP publishes)."""
    submit: KeyedRateLimiter = field(default_factory=lambda: _default_limits().submit)
    """Job submissions per API key (per client address in open mode)."""
    connections: ConnectionCounter = field(default_factory=lambda: _default_limits().connections)

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            publish=KeyedRateLimiter(settings.publish_rate, settings.publish_burst),
            submit=KeyedRateLimiter(settings.submit_rate, settings.submit_burst),
            connections=ConnectionCounter(settings.max_connections_per_client),
        )
