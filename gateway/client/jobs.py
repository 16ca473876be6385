"""A job as the client sees it: the resource `POST /jobs` and `GET /jobs/{id}` answer with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.vocabulary import JobStatus


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of a job's record; `Client.follow(job)` streams what happens next.

    `token` is the channel token `POST /jobs` hands out for the job's channel (None in the
    answers of `GET /jobs/{id}`): `follow` subscribes with it, so a client holding only that
    token can follow the job it submitted. `resource` is the whole JSON answer.
    """

    id: str
    type: str
    status: JobStatus
    token: str | None
    last_event_id: str | None
    resource: dict[str, Any]

    @classmethod
    def from_resource(cls, resource: dict[str, Any]) -> Job:
        last = resource.get("last_event_id")
        return cls(
            id=str(resource["id"]),
            type=str(resource.get("type", "")),
            status=JobStatus(resource.get("status", JobStatus.QUEUED)),
            token=resource.get("token") if isinstance(resource.get("token"), str) else None,
            last_event_id=str(last) if last else None,
            resource=resource,
        )

    @property
    def channel(self) -> str:
        return f"job:{self.id}"

    @property
    def ended(self) -> bool:
        return self.status.terminal
