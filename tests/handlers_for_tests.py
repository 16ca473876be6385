"""Job handlers used only by the fault tests (loaded with `--handlers tests.handlers_for_tests`)."""

from __future__ import annotations

import os
import signal
from typing import Any

from gateway.jobs.registry import JobContext, handler


@handler("crash", description="Kills its own worker process (SIGKILL) on every attempt.")
async def crash(ctx: JobContext) -> Any:
    await ctx.progress(0.1, "about to crash")
    os.kill(os.getpid(), signal.SIGKILL)
