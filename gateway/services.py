"""The parts one gateway process is made of, built once by `create_app` and shared by routes."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from gateway.auth import ApiKeys, ChannelPolicy
from gateway.backends.base import Backend
from gateway.hub import Hub
from gateway.jobs.registry import HandlerRegistry
from gateway.limits import Limits
from gateway.settings import Settings


@dataclass(slots=True)
class Services:
    settings: Settings
    backend: Backend
    hub: Hub
    policy: ChannelPolicy
    registry: HandlerRegistry
    api_keys: ApiKeys = field(default_factory=lambda: ApiKeys(()))
    limits: Limits = field(default_factory=Limits)


def services_of(connection: HTTPConnection) -> Services:
    services: Services = connection.app.state.services
    return services
