"""What the three integrations share, on a real Redis: the job state changes, the result bound,
the error shapes, job tokens, and the refusal of a gateway that is not on Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.errors import SettingsError
from gateway.integrations import job_token
from gateway.integrations.lifecycle import QueueJobs, bounded_result, bus_settings, error_of
from gateway.jobs.model import load_job, transition
from gateway.tokens import TokenSigner
from gateway.vocabulary import EventType


@pytest.fixture
async def jobs(redis_url: str) -> AsyncIterator[QueueJobs]:
    opened = QueueJobs.open(redis_url, max_result_bytes=100)
    yield opened
    await opened.close()


async def types(jobs: QueueJobs, job_id: str) -> list[str]:
    history = await jobs.backend.bus.history(f"job:{job_id}", None)
    return [event.type for event in history.events]


async def test_a_task_is_queued_once_however_often_it_is_sent(jobs: QueueJobs) -> None:
    assert await jobs.queued("t1", "tasks.resize")
    assert not await jobs.queued("t1", "tasks.resize")  # a retry's re-send
    assert await types(jobs, "t1") == ["job.queued"]
    record = await load_job(jobs.backend, "t1")
    assert record is not None and record.type == "tasks.resize" and record.status == "queued"


async def test_a_task_sent_without_the_integration_is_recorded_when_it_starts(
    jobs: QueueJobs,
) -> None:
    assert await jobs.started("t2", "tasks.resize")
    assert await jobs.started("t2", "tasks.resize")
    history = await jobs.backend.bus.history("job:t2", None)
    assert [e.type for e in history.events] == ["job.queued", "job.started", "job.started"]
    record = await load_job(jobs.backend, "t2")
    assert record is not None and record.attempts == 2


async def test_progress_answers_false_once_the_job_was_cancelled_through_the_gateway(
    jobs: QueueJobs,
) -> None:
    await jobs.queued("t3", "tasks.resize")
    await jobs.started("t3", "tasks.resize")
    assert await jobs.progress("t3", 1.7, "clamped")
    await transition(jobs.backend, "t3", EventType.CANCELLED, {"reason": "cancelled by request"})
    assert not await jobs.progress("t3", 0.5, "too late")
    assert not await jobs.completed("t3", "too late")
    record = await load_job(jobs.backend, "t3")
    assert record is not None and record.status == "cancelled" and record.progress == 1.0


async def test_a_terminal_event_bounds_the_jobs_record_and_history(jobs: QueueJobs) -> None:
    await jobs.queued("t4", "tasks.resize")
    assert await jobs.failed("t4", {"type": "ValueError", "message": "no"})
    redis = jobs.backend.jobs._redis  # type: ignore[attr-defined]
    assert 0 < await redis.ttl("gw:{job:t4}:job") <= jobs.settings.job_ttl
    assert 0 < await redis.ttl("gw:{job:t4}:log") <= jobs.settings.job_ttl


def test_results_are_bounded_and_say_so() -> None:
    assert bounded_result({"a": 1}, 100) == ({"a": 1}, {})
    assert bounded_result("x" * 200, 100) == (
        None,
        {"result_too_large": {"bytes": 202, "limit": 100}},
    )
    value, notes = bounded_result({1, 2}, 100)
    assert value == "{1, 2}" and notes == {"result_repr": True}


async def test_the_result_bound_never_exceeds_the_namespace_event_limit(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_MAX_EVENT_SIZE", "job=4096")
    opened = QueueJobs.open(redis_url, max_result_bytes=10**9)
    try:
        assert opened.result_limit("x") == 4096 - 1024
        await opened.queued("t6", "tasks.big")
        assert await opened.completed("t6", "x" * 5000)  # left out, not refused
    finally:
        await opened.close()


def test_errors_take_the_gateway_workers_shape() -> None:
    assert error_of(ValueError("x" * 3000)) == {"type": "ValueError", "message": "x" * 2000}
    assert error_of(None, "lost") == {"type": "error", "message": "lost"}


def test_a_gateway_not_on_redis_is_refused() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL"):
        bus_settings("")
    with pytest.raises(SettingsError):
        bus_settings("memory://")


def test_job_tokens_are_signed_with_the_gateways_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_SECRET", raising=False)
    with pytest.raises(SettingsError, match="GATEWAY_SECRET"):
        job_token("t5")
    secret = "s" * 40
    monkeypatch.setenv("GATEWAY_SECRET", secret)
    token = TokenSigner([secret]).verify(job_token("t5", ttl=60))
    assert token.grants("job:t5", "subscribe")
    assert not token.grants("job:t6", "subscribe")
    assert not token.grants("job:t5", "publish")


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"progress": 0.4, "message": "resizing", "file": "a"}, (0.4, "resizing", {"file": "a"})),
        (
            {"current": 3, "total": 4, "status": "uploading"},
            (0.75, "uploading", {"current": 3, "total": 4}),
        ),
        ({"current": 3, "total": 0}, (0.0, "", {"current": 3, "total": 0})),
        ({"progress": "not a number"}, (0.0, "", {})),
    ],
)
def test_celery_progress_meta(meta: dict[str, Any], expected: Any) -> None:
    pytest.importorskip("celery")
    from gateway.integrations.celery import _progress_of

    assert _progress_of(meta) == expected


def test_rq_errors_come_from_the_tracebacks_last_line() -> None:
    pytest.importorskip("rq")
    from gateway.integrations.rq import error_from_traceback

    text = 'Traceback (most recent call last):\n  File "x.py"\nbuiltins.ValueError: no such image\n'
    assert error_from_traceback(text) == {"type": "ValueError", "message": "no such image"}
    lost = "Work-horse terminated unexpectedly; waitpid returned 9 (signal 9); "
    assert error_from_traceback(lost) == {"type": "error", "message": lost.strip()}
