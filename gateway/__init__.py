"""gateway: a real-time notification gateway for background jobs."""

from __future__ import annotations

from gateway.jobs.handlers import HandlerError, JobContext, handler
from gateway.publish import PublishError, publish

__all__ = ["HandlerError", "JobContext", "PublishError", "handler", "publish"]
