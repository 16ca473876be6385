"""Handlers for the cancellation tests: one that honours `ctx.cancelled`, one that ignores it.

Each writes a marker file into `data.dir`, so the test can see what the handler went through.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.jobs.registry import JobContext, handler


@handler("cooperative", description="Runs until cancelled, then stops by itself.")
async def cooperative(ctx: JobContext) -> Any:
    await ctx.progress(0.1, "waiting to be cancelled")
    await asyncio.wait_for(ctx.cancelled.wait(), timeout=60)
    Path(ctx.data["dir"], f"{ctx.job_id}.saw-cancel").write_text("stopped")  # noqa: ASYNC240
    return {"stopped": True}


@handler("stubborn", description="Ignores cancellation; is cancelled after the grace period.")
async def stubborn(ctx: JobContext) -> Any:
    await ctx.progress(0.1, "ignoring everyone")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        Path(ctx.data["dir"], f"{ctx.job_id}.killed").write_text(str(ctx.cancelled.is_set()))  # noqa: ASYNC240
        raise
    return {}
