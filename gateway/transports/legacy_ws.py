"""uvicorn's legacy `websockets` protocol (`gateway serve --ws websockets`) with the read budget.

A module of its own because importing uvicorn's legacy protocol warns that it is deprecated:
only a gateway started with `--ws websockets` imports it. The budget is charged per frame as
the legacy protocol reads it (control frames and fragments included), and a connection over
it is failed with 4029 like under the gateway's default protocol (`server.py`). What it reaches
of uvicorn's and websockets' legacy protocol is declared in `internals.INTERNALS` (`ws-legacy`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol
from websockets.legacy.framing import Frame

from gateway.limits import ReadBudget
from gateway.metrics import METRICS
from gateway.transports.server import settings_of
from gateway.vocabulary import CloseCode

log = logging.getLogger("gateway.ws")


class BudgetedLegacyWebSocketProtocol(WebSocketProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = settings_of(self.app)
        self.read_budget = (
            ReadBudget.from_settings(settings, self.loop.time()) if settings is not None else None
        )

    async def read_frame(self, max_size: int | None) -> Frame:
        frame = await super().read_frame(max_size)
        budget = self.read_budget
        if budget is None:
            return frame
        budget.refill(self.loop.time())
        limit = None
        if not budget.spend_frames(1):
            limit = "frames"
        elif not budget.spend_bytes(len(frame.data) + 6):  # + the smallest frame header
            limit = "bytes"
        if limit is None:
            return frame
        METRICS.ws_read_budget_exceeded.labels(limit).inc()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
        log.info(
            "%s - WebSocket closed %d: over its read budget (%s)",
            client,
            CloseCode.READ_BUDGET,
            limit,
        )
        # Sends the close frame and cancels the task reading frames, which is this one.
        self.fail_connection(CloseCode.READ_BUDGET, f"read budget exceeded: too many {limit}/s")
        raise asyncio.CancelledError
