"""Webhooks: a job's events POSTed to its `callback_url`, signed, guarded, persisted, retried.

`schedule` decides which events go and records them; `dispatcher` delivers them from a worker;
`address` keeps deliveries off internal addresses; `signing` signs them (Standard Webhooks).
"""

from __future__ import annotations

from gateway.webhooks.address import check_callback_url
from gateway.webhooks.schedule import parse_callback_events

__all__ = ["check_callback_url", "parse_callback_events"]
