"""Which of a job's events go to its callback, and recording them for delivery.

The event is never sent from the request path: publishing it only records a delivery in the
backend's schedule (Redis: a sorted set of due times plus a hash of payloads); a worker's
`WebhookDispatcher` claims and sends it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson

from gateway.backends.bundle import Backend
from gateway.errors import InvalidInput
from gateway.events import Event, iso_time, now_ms
from gateway.vocabulary import EventType

DEFAULT_CALLBACK_EVENTS: Final = tuple(kind.value for kind in EventType if kind.terminal)
"""What a callback gets when the submitter did not say (`callback_events`); `["*"]` means all."""

CALLBACK_EVENT_CHOICES: Final = ("*", *(kind.value for kind in EventType))


@dataclass(frozen=True, slots=True)
class Callback:
    """Where a job's events go, and which of them."""

    url: str
    events: tuple[str, ...] = DEFAULT_CALLBACK_EVENTS

    def wants(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events


def parse_callback_events(value: Any) -> tuple[str, ...]:
    """Validate `callback_events`: a list of job event types, or `["*"]`; None means terminal.

    Raises `InvalidInput` (a `ValueError`) for anything else."""
    if value is None:
        return DEFAULT_CALLBACK_EVENTS
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidInput("'callback_events' must be a non-empty list of event types, or ['*']")
    unknown = sorted(set(value).difference(CALLBACK_EVENT_CHOICES))
    if unknown:
        known = sorted(CALLBACK_EVENT_CHOICES)
        raise InvalidInput(f"unknown callback_events {unknown}; known: {known}")
    return tuple(dict.fromkeys(value))


@dataclass(slots=True)
class PendingDelivery:
    """One event on its way to one callback URL, as stored in the backend's schedule."""

    job_id: str
    event_id: str
    event_type: str
    url: str
    body: str
    attempt: int = 0

    @property
    def id(self) -> str:
        return f"{self.job_id}/{self.event_id}"

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> PendingDelivery:
        return cls(**orjson.loads(raw))


async def schedule_event(backend: Backend, job_id: str, callback: Callback, event: Event) -> None:
    """Record that `event` must reach the job's callback; a worker delivers it."""
    if not callback.wants(event.type):
        return
    pending = PendingDelivery(job_id, event.id, event.type, callback.url, event.envelope.decode())
    await backend.webhooks.schedule(pending.id, pending.encode(), time.time())
    await backend.jobs.update(
        job_id, {"webhook_delivered": "0", "webhook_next_attempt_at": iso_time(now_ms())}
    )


def webhook_state(fields: dict[str, str]) -> dict[str, Any]:
    """The `webhook` member of a job resource, from the job record's `webhook_*` fields."""
    last = fields.get("webhook_last_status", "")
    return {
        "attempts": int(fields.get("webhook_attempts", "0") or 0),
        "last_status": int(last) if last not in ("", "0") else None,
        "next_attempt_at": fields.get("webhook_next_attempt_at") or None,
        "delivered": fields.get("webhook_delivered") == "1",
        "last_error": fields.get("webhook_last_error") or None,
    }
