"""The guard on callback addresses: only public http(s) hosts, checked where they are used.

A callback URL is checked at submission (an early 422) and again as each delivery connects,
by `PinnedNetwork`, which connects to the very addresses it checked: a DNS answer that changes
between the check and the connection (rebinding) cannot aim a delivery at an internal service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

import httpcore
import httpx

from gateway.errors import UnresolvedCallbackHost, UnsafeCallbackUrl

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[Address]]]
"""Turns a host name and port into addresses (the system resolver unless a test injects one)."""

_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE: Final = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED: Final = ipaddress.ip_network("::ffff:0:0:0/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries, which is where a packet to it really goes.

    Python calls most of these forms global whatever they embed (`::127.0.0.1`,
    `64:ff9b::7f00:1`, `2002:7f00:1::`...), so they are judged by the address inside.
    Raises `ValueError` for an address in the local-use NAT64 prefix whose embedding is not
    the /96 one: its translator's prefix length is local knowledge, so the target is unknown.
    """
    if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d
        return address.ipv4_mapped
    if address.sixtofour is not None:  # 2002:aabb:ccdd::/48, 6to4
        return address.sixtofour
    last32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64 or address in _IPV4_TRANSLATED or address in _IPV4_COMPATIBLE:
        return last32  # 64:ff9b::a.b.c.d, ::ffff:0:a.b.c.d, ::a.b.c.d
    if address in _NAT64_LOCAL:
        if (int(address) >> 32) & ((1 << 48) - 1):
            raise ValueError("a local-use NAT64 address with an unknown prefix length")
        return last32  # 64:ff9b:1::a.b.c.d
    return None


def is_internal(address: Address) -> bool:
    """Anything not globally routable: loopback, private, link-local (cloud metadata), CGNAT,
    multicast..., and IPv6 forms that embed such an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        try:
            inner = embedded_ipv4(address)
        except ValueError:
            return True
        if inner is not None and is_internal(inner):
            return True
        if address.is_site_local:
            return True
    return not address.is_global or address.is_multicast


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    """A callback URL taken apart the way httpx will use it (one parser, no differential)."""

    url: httpx.URL
    host: str
    """ASCII (IDNA-encoded) host, without brackets for IPv6: what the connection resolves."""
    port: int


def parse_callback_url(url: str) -> CallbackTarget:
    """Refuse what is not an http(s) URL with a host; no DNS involved."""
    if len(url) > 2048:
        raise UnsafeCallbackUrl("the callback URL is longer than 2048 characters")
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise UnsafeCallbackUrl(
            "the callback URL is malformed (or its host is not a valid domain name)"
        ) from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeCallbackUrl("only http:// and https:// callback URLs are allowed")
    if not host:
        raise UnsafeCallbackUrl("the callback URL has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return CallbackTarget(parsed, host, port)


async def system_resolve(host: str, port: int) -> list[Address]:
    """The system resolver (getaddrinfo), bounded to 5 s."""
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=5)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _literal_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None


async def checked_addresses(
    host: str, port: int, *, allow_private: bool, resolve: Resolver = system_resolve
) -> list[Address]:
    """Resolve `host` once and return its addresses, all of them public unless `allow_private`.

    The refusal never says what the name resolved to: that would make the gateway a probe of
    internal DNS.
    """
    literal = _literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = await resolve(host, port)
        except (OSError, TimeoutError, UnicodeError, ValueError):
            addresses = []
        if not addresses:
            raise UnresolvedCallbackHost(f"the callback host {host!r} does not resolve")
    if not allow_private and any(is_internal(address) for address in addresses):
        if literal is not None:
            raise UnsafeCallbackUrl(
                "the callback address is a loopback, private, link-local or otherwise "
                "internal address"
            )
        raise UnsafeCallbackUrl(
            f"the callback host {host!r} resolves to a loopback, private, link-local or "
            "otherwise internal address"
        )
    return addresses


async def check_callback_url(
    url: str, *, allow_private: bool, resolve: Resolver = system_resolve
) -> None:
    """Refuse URLs that are not http(s) or whose host resolves to a non-public address.

    Checked at submission, for an early 422. Deliveries do not rely on it: they check again
    when they connect, and connect to the very address that was checked (`PinnedNetwork`).
    """
    target = parse_callback_url(url)
    if not allow_private:
        await checked_addresses(target.host, target.port, allow_private=False, resolve=resolve)


class PinnedNetwork(httpcore.AsyncNetworkBackend):
    """httpcore's network layer for webhook connections: resolve once, check, connect to what
    was checked.

    A guard that resolves a name and then lets the HTTP client resolve it again loses to a
    rebinding DNS server (public answer for the check, 127.0.0.1 for the connection). Here the
    one resolution is the one that is both checked and connected to. The URL keeps its host
    name, so the Host header, TLS SNI and certificate verification all use the name.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        resolve: Resolver = system_resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.resolve = resolve
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await checked_addresses(
                host, port, allow_private=self.allow_private, resolve=self.resolve
            )
        except UnresolvedCallbackHost as exc:
            raise httpcore.ConnectError(str(exc)) from None
        failure: Exception | None = None
        for address in dict.fromkeys(addresses):
            try:
                return await self.inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are never sent over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
