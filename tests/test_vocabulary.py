"""`gateway/vocabulary.py`: the terminal sets, the status each event moves a job to, and the copies
of the vocabulary that live outside Python (the JavaScript client and dashboard, the Lua scripts),
which these tests keep from drifting."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.backends.redis_keys import BEGIN_ATTEMPT_LUA, LUA_PRELUDE, PUBLISH_LUA
from gateway.client.terminal import JOB_EXIT_CODES
from gateway.vocabulary import (
    JOB_TERMINAL_STATUSES,
    JOB_TERMINAL_TYPES,
    STATUS_BY_EVENT,
    EventType,
    JobStatus,
)
from gateway.webhooks.schedule import DEFAULT_CALLBACK_EVENTS, parse_callback_events

STATIC = Path(__file__).parent.parent / "static"
JS_STRING = re.compile(r"'([^']*)'")


def js_constant(path: Path, name: str) -> str:
    """The source of `const NAME = ...;` in a static script."""
    match = re.search(rf"^const {name} = (.*?);$", path.read_text(), re.MULTILINE | re.DOTALL)
    assert match is not None, f"no `const {name}` in {path.name}"
    return match.group(1)


def test_terminal_statuses() -> None:
    assert {"completed", "failed", "cancelled"} == JOB_TERMINAL_STATUSES
    assert {status for status in JobStatus if status.terminal} == JOB_TERMINAL_STATUSES


def test_terminal_types_are_the_events_that_move_a_job_to_a_terminal_status() -> None:
    assert {"job.completed", "job.failed", "job.cancelled"} == JOB_TERMINAL_TYPES
    assert {kind for kind in EventType if kind.status.terminal} == JOB_TERMINAL_TYPES
    assert {kind for kind in EventType if kind.terminal} == JOB_TERMINAL_TYPES


def test_status_by_event_covers_every_event_type() -> None:
    assert set(STATUS_BY_EVENT) == set(EventType)
    assert set(STATUS_BY_EVENT.values()) == set(JobStatus)
    assert EventType.STARTED.status is JobStatus.RUNNING
    assert EventType.PROGRESS.status is JobStatus.RUNNING


def test_members_are_their_wire_strings() -> None:
    assert all(kind == kind.value and f"{kind}" == kind.value for kind in EventType)
    assert all(status == status.value and f"{status}" == status.value for status in JobStatus)


def test_callback_events_default_to_the_terminal_ones_in_a_fixed_order() -> None:
    assert DEFAULT_CALLBACK_EVENTS == ("job.completed", "job.failed", "job.cancelled")
    assert all(type(kind) is str for kind in DEFAULT_CALLBACK_EVENTS)
    assert parse_callback_events(None) == DEFAULT_CALLBACK_EVENTS
    assert parse_callback_events([kind.value for kind in EventType]) == tuple(EventType)


def test_client_exit_codes_cover_the_terminal_types() -> None:
    assert JOB_EXIT_CODES == {"job.completed": 0, "job.failed": 1, "job.cancelled": 1}


def test_lua_scripts_get_the_terminal_statuses_from_python() -> None:
    for status in JOB_TERMINAL_STATUSES:
        assert f"['{status}'] = true" in LUA_PRELUDE
    for script in (PUBLISH_LUA, BEGIN_ATTEMPT_LUA):
        assert script.startswith(LUA_PRELUDE)
        body = script.removeprefix(LUA_PRELUDE)
        assert "JOB_TERMINAL_STATUSES[status]" in body
        assert not any(f"'{status}'" in body for status in JobStatus), "a status spelled out"


def test_gateway_js_terminal_types_are_the_python_ones() -> None:
    source = js_constant(STATIC / "gateway.js", "TERMINAL")
    assert set(JS_STRING.findall(source)) == JOB_TERMINAL_TYPES


def test_dashboard_status_by_event_is_the_python_one() -> None:
    source = js_constant(STATIC / "jobs.js", "STATUS_BY_EVENT")
    pairs = re.findall(r"'([^']*)':\s*'([^']*)'", source)
    assert dict(pairs) == STATUS_BY_EVENT
    assert len(pairs) == len(STATUS_BY_EVENT)
