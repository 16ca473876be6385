"""A job type for tests/api/test_batch.py (loaded with `GATEWAY_HANDLERS`): its data check
refuses every job, naming the event-loop pass it ran in, so a test sees from outside whether
a batch gave the loop to other work between its items."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.errors import InvalidJobData
from gateway.jobs.registry import JobContext, handler

_pass = 0
_marked = False


def _next_pass() -> None:
    global _marked
    _marked = False


def loop_pass() -> int:
    """A number that changes once the event loop has run anything else since the last call
    (a one-shot callback marks each pass; no timer, no busy loop)."""
    global _pass, _marked
    if not _marked:
        _marked = True
        _pass += 1
        asyncio.get_running_loop().call_soon(_next_pass)
    return _pass


def refuse_with_loop_pass(data: Any) -> Any:
    raise InvalidJobData(f"loop pass {loop_pass()}")


@handler("loop_pass", validate=refuse_with_loop_pass, description="Refused: names its loop pass.")
async def never(ctx: JobContext) -> Any:
    return None
