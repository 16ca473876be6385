"""gateway: a real-time notification gateway for background jobs."""

from __future__ import annotations

from gateway.errors import HandlerError, PublishError, SubmitError
from gateway.jobs.registry import JobContext, handler
from gateway.publish import publish, publish_many
from gateway.submit import submit, submit_many

__all__ = [
    "HandlerError",
    "JobContext",
    "PublishError",
    "SubmitError",
    "handler",
    "publish",
    "publish_many",
    "submit",
    "submit_many",
]
