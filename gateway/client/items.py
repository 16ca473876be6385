"""What a subscription yields: events, and gaps where events were lost.

A gap is an item, not an exception: a consumer that can live with it (a live view) goes on
with the next event, and one that cannot (a projection that must see everything) rebuilds from
its source of truth when it meets one; either way the iteration is not torn down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.vocabulary import JOB_TERMINAL_TYPES, EventType


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a channel: its CloudEvents envelope's members, typed.

    `id` is the resume position (`<ms>-<seq>`, increasing within the channel). `envelope` is the
    whole envelope as the gateway sent it, for members this class does not name.
    """

    id: str
    channel: str
    type: str
    data: Any
    time: str
    source: str
    envelope: dict[str, Any]

    @classmethod
    def from_envelope(cls, envelope: dict[str, Any]) -> Event:
        """An event from its envelope (an `event` frame without `op`, or an SSE `data:`)."""
        return cls(
            id=str(envelope["id"]),
            channel=str(envelope["channel"]),
            type=str(envelope.get("type", "")),
            data=envelope.get("data"),
            time=str(envelope.get("time", "")),
            source=str(envelope.get("source", "")),
            envelope=envelope,
        )

    @property
    def ends_job(self) -> bool:
        """Whether this is a job's last event: `job.completed`, `job.failed` or `job.cancelled`."""
        return self.type in JOB_TERMINAL_TYPES

    @property
    def job_succeeded(self) -> bool:
        return self.type == EventType.COMPLETED


@dataclass(frozen=True, slots=True)
class Gap:
    """Events after `since` on `channel` are gone: the channel's history was trimmed (its
    retention or length limit) before they could be replayed. The next `Event` of the
    subscription is the oldest one still kept; what lies between is lost for good."""

    channel: str
    since: str


Item = Event | Gap
"""What `Subscription` yields."""
