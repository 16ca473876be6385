"""Who may subscribe to and publish on which channel.

Namespaces carry policy: `job:` channels are written only by workers and the server API, while
clients talk to each other in `room:` channels. Unknown namespaces are refused, so a typo does
not silently create a channel nobody reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.events import namespace_of

KNOWN_NAMESPACES = frozenset({"job", "room", "user"})
CLIENT_PUBLISH_NAMESPACES = frozenset({"room", "user"})


class Forbidden(Exception):
    """The caller may not do this on this channel; the message says why."""


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    namespaces: frozenset[str] = KNOWN_NAMESPACES
    client_publish: frozenset[str] = CLIENT_PUBLISH_NAMESPACES

    def check_namespace(self, channel: str) -> None:
        namespace = namespace_of(channel)
        if namespace not in self.namespaces:
            known = ", ".join(sorted(self.namespaces))
            raise Forbidden(f"unknown namespace {namespace!r}; channels live in: {known}")

    def check_subscribe(self, channel: str) -> None:
        self.check_namespace(channel)

    def check_client_publish(self, channel: str) -> None:
        """Publishing from a client connection (WebSocket), as opposed to the server API."""
        self.check_namespace(channel)
        if namespace_of(channel) not in self.client_publish:
            raise Forbidden(f"clients cannot publish to {namespace_of(channel)!r} channels")
