"""arq's worker settings: `arq bench.peers.arq_worker.WorkerSettings`.

arq's default worker polls the queue every 0.5 s and its `Job.result()` every 0.5 s, which caps a
one-at-a-time round trip near 1 s; the benchmark runs both at 1 ms polling (`ARQ_POLL_DELAY`,
seconds), as the issue's figures did.
"""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings

POLL_DELAY = float(os.environ.get("ARQ_POLL_DELAY", "0.001"))


async def noop(ctx: dict[str, Any]) -> None:
    return None


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(
        os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    poll_delay = POLL_DELAY
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "10"))  # arq's default: 10
    log_results = False
    handle_signals = True
