"""Celery, RQ and arq tasks as gateway jobs: a job record and a `job:<task id>` channel each.

One line in the app (`gateway.integrations.celery.install(app)`, `gateway.integrations.rq.Queue`
and `Worker`, `gateway.integrations.arq.install(...)`) turns the queue's own signals or hooks
into the gateway's job events, written straight into the gateway's Redis with the scripts the
gateway itself uses (`gateway.jobs.model`). The tasks still run on the queue's workers; none
is ever put on the gateway's queue, so a gateway worker never runs one. docs/integrations.md
says what each queue reports and when.

Each queue module imports its queue library; this package and `lifecycle` import none, and
the gateway server imports nothing from here.
"""

from __future__ import annotations

import os

from gateway.auth import ChannelPolicy
from gateway.errors import SettingsError
from gateway.settings import Settings


def job_token(job_id: str, ttl: int | None = None) -> str:
    """A token that lets a browser follow one task's job (and nothing else), minted locally.

    The gateway needs one in secure mode (a `GATEWAY_SECRET` set) for `GET /jobs/{id}`, its
    events and WebSocket subscription; this signs it with the same `GATEWAY_SECRET` (read from
    the environment, like the gateway's own settings), valid `ttl` seconds
    (`GATEWAY_TOKEN_TTL` by default). The same token `POST /jobs` returns for a native job.
    """
    settings = Settings.from_env(redis_url=os.environ.get("REDIS_URL", ""))
    if not settings.secrets:
        raise SettingsError(
            "job_token needs GATEWAY_SECRET (the gateway's token secret) in the environment; "
            "without one the gateway is in dev mode and needs no token"
        )
    policy = ChannelPolicy.from_settings(settings)
    return policy.job_token(job_id, settings.token_ttl if ttl is None else ttl)
