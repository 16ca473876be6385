"""The parts one gateway process is made of, built once by `create_app` and shared by routes."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from gateway.auth import ChannelPolicy
from gateway.backends.base import Backend
from gateway.hub import Hub
from gateway.jobs.handlers import HandlerRegistry
from gateway.settings import Settings


@dataclass(slots=True)
class Services:
    settings: Settings
    backend: Backend
    hub: Hub
    policy: ChannelPolicy
    registry: HandlerRegistry


def services_of(connection: HTTPConnection) -> Services:
    services: Services = connection.app.state.services
    return services
