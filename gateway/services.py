"""The parts one gateway process is made of, built once by `create_app` and shared by routes
and transports. Job routes get the handler registry too (`gateway.jobs.services`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from gateway.auth import ApiKeys, ChannelPolicy
from gateway.backends.bundle import Backend
from gateway.channels import ChannelService
from gateway.hub import Hub
from gateway.limits import Limits
from gateway.presence import Presence
from gateway.settings import Settings


@dataclass(slots=True)
class Services:
    settings: Settings
    backend: Backend
    hub: Hub
    policy: ChannelPolicy
    api_keys: ApiKeys = field(default_factory=lambda: ApiKeys(()))
    limits: Limits = field(default_factory=Limits)
    channels: ChannelService = field(init=False)
    """Subscribe, publish and history rules, the same for every transport and route."""
    presence: Presence = field(init=False)
    """Who is subscribed where, across processes; the hub tells it of every (un)subscribe."""

    def __post_init__(self) -> None:
        self.channels = ChannelService(self.policy, self.limits, self.backend)
        self.presence = Presence(self.settings, self.backend, self.channels)
        self.hub.membership = self.presence


def services_of(connection: HTTPConnection) -> Services:
    services: Services = connection.app.state.services
    return services
