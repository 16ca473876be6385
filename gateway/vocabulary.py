"""The words the gateway and its clients share: job statuses, event types, close codes.

One definition each; everything else (the job model, the webhook filter, the OpenAPI and
AsyncAPI enums, the Lua scripts' arguments, the close calls) derives from these. `StrEnum`
members are plain strings on the wire, so `JobStatus.COMPLETED == "completed"`.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Final


class JobStatus(StrEnum):
    """Where a job is in its life; the record's `status` field."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in JOB_TERMINAL_STATUSES


class EventType(StrEnum):
    """The events the gateway itself publishes on a job's channel `job:<id>`.

    Rooms and other namespaces carry whatever types their publishers choose."""

    QUEUED = "job.queued"
    STARTED = "job.started"
    PROGRESS = "job.progress"
    RETRYING = "job.retrying"
    COMPLETED = "job.completed"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"

    @property
    def status(self) -> JobStatus:
        """The job status this event moves the job to."""
        return STATUS_BY_EVENT[self]

    @property
    def terminal(self) -> bool:
        return self in JOB_TERMINAL_TYPES


JOB_TERMINAL_STATUSES: Final = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
)
JOB_TERMINAL_TYPES: Final = frozenset({EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED})
STATUS_BY_EVENT: Final[dict[EventType, JobStatus]] = {
    EventType.QUEUED: JobStatus.QUEUED,
    EventType.STARTED: JobStatus.RUNNING,
    EventType.PROGRESS: JobStatus.RUNNING,
    EventType.RETRYING: JobStatus.RETRYING,
    EventType.COMPLETED: JobStatus.COMPLETED,
    EventType.FAILED: JobStatus.FAILED,
    EventType.CANCELLED: JobStatus.CANCELLED,
}


class CloseCode(IntEnum):
    """WebSocket close codes the gateway sends, and what a client should do on each.

    1xxx are RFC 6455's; 4xxx are the gateway's own (documented in docs/websocket.md).
    """

    NORMAL = 1000
    """The client or the gateway ended the connection; nothing to do."""
    GOING_AWAY = 1001
    """The gateway is shutting down or restarting: reconnect (to another) and resume."""
    INVALID_DATA = 1007
    """A text message that is not UTF-8."""
    POLICY = 1008
    """Refused: host or origin not allowed, forbidden, or the token expired."""
    TOO_BIG = 1009
    """A message over GATEWAY_MAX_MESSAGE, or request headers too large."""
    INTERNAL = 1011
    """The gateway failed; reconnect and resume."""
    TRY_AGAIN = 1013
    """Too many connections from this address, or the bus is unavailable: retry later."""
    DISCONNECTED = 4001
    """The server disconnected this user (`POST /users/{sub}/disconnect`) or revoked the
    token: do not reconnect."""
    DISCONNECTED_RECONNECT = 4002
    """The server disconnected this user and asks it to reconnect (e.g. with a new token)."""
    SLOW_CONSUMER = 4008
    """The client read too slowly and its queue overflowed: reconnect and resume with since."""
    READ_BUDGET = 4029
    """Sent more frames or bytes per second than GATEWAY_WS_READ_FRAMES / _BYTES allow."""
    PROTOCOL = 4400
    """Reserved for protocol errors; not sent by this version (bad ops get error frames)."""
