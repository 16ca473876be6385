"""gateway: a real-time notification gateway for background jobs."""

from __future__ import annotations

from gateway.errors import HandlerError, PublishError
from gateway.jobs.registry import JobContext, handler
from gateway.publish import publish

__all__ = ["HandlerError", "JobContext", "PublishError", "handler", "publish"]
