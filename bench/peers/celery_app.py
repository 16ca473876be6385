"""Celery with Redis as broker and result backend; `noop` ignores its result (drain and
enqueue), `noop_result` stores it (round trip: the producer waits on `AsyncResult.get()`, which
the Redis backend answers through pub/sub)."""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)


@app.task(name="noop", ignore_result=True)
def noop() -> None:
    return None


@app.task(name="noop_result")
def noop_result() -> None:
    return None
