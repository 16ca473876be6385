"""The parts job routes use: the shared ones (`gateway.services`) plus the handler registry.

The registry is the jobs' own business: transports and channel routes never look a handler up,
so `Services` does not carry it and importing `gateway.services` does not import the jobs.
`create_app` builds one `JobServices`; every route still finds it with `services_of`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from gateway.jobs.occupancy import JobOccupancy
from gateway.jobs.registry import HandlerRegistry
from gateway.services import Services


@dataclass(slots=True, kw_only=True)
class JobServices(Services):
    registry: HandlerRegistry
    """The job types this gateway accepts (submission checks the type and its data here)."""
    occupancy: JobOccupancy = field(init=False)
    """The occupancy webhook and `cancel_when_unwatched` (told by presence)."""

    def __post_init__(self) -> None:
        Services.__post_init__(self)
        self.occupancy = JobOccupancy(self.backend, self.settings)
        self.presence.occupancy_listeners.append(self.occupancy.changed)


def job_services_of(connection: HTTPConnection) -> JobServices:
    services: JobServices = connection.app.state.services
    return services
