"""The gateway's Python client, for services that consume and publish events.

`Client` holds one WebSocket (`gateway.v1`) for all of its subscriptions and resumes each of
them across disconnects from the id of the last event it took in; jobs and publishing go over
HTTP. docs/python-client.md is the guide. The CLI's `submit` and `follow` are built on it
(`gateway.client.terminal`).
"""

from __future__ import annotations

from gateway.client.client import Client
from gateway.client.connection import ConnectionStatus
from gateway.client.items import Event, Gap, Item
from gateway.client.jobs import Job
from gateway.client.subscription import Subscription
from gateway.errors import (
    ClientError,
    Conflict,
    Disconnected,
    GatewayUnavailable,
    NotFound,
    RequestForbidden,
    RequestInvalid,
    RequestRateLimited,
)

__all__ = [
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionStatus",
    "Disconnected",
    "Event",
    "Gap",
    "GatewayUnavailable",
    "Item",
    "Job",
    "NotFound",
    "RequestForbidden",
    "RequestInvalid",
    "RequestRateLimited",
    "Subscription",
]
