"""The built-in job types' input models: the bounds, defaults and strictness the hand-written
validators had (a string is not a number, `true` is not an integer, `1.0` is not a count)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import InvalidJobData
from gateway.jobs.registry import REGISTRY, HandlerSpec, JobContext


def spec(name: str) -> HandlerSpec:
    REGISTRY.load_modules(())
    found = REGISTRY.get(name)
    assert found is not None
    return found


def refused(name: str, data: Any) -> dict[str, str]:
    with pytest.raises(InvalidJobData) as error:
        spec(name).check(data)
    return dict(error.value.errors)


def test_sleep_defaults_and_bounds() -> None:
    assert spec("sleep").check(None) == {"seconds": 1.0, "steps": 5}
    assert spec("sleep").check({"seconds": 0, "steps": 1}) == {"seconds": 0.0, "steps": 1}
    assert spec("sleep").check({"seconds": 3600, "steps": 10_000})["steps"] == 10_000
    for data, field in [
        ({"seconds": "x"}, "seconds"),
        ({"seconds": "5"}, "seconds"),
        ({"seconds": True}, "seconds"),
        ({"seconds": -1}, "seconds"),
        ({"seconds": 3601}, "seconds"),
        ({"seconds": float("inf")}, "seconds"),
        ({"steps": 0}, "steps"),
        ({"steps": 10_001}, "steps"),
        ({"steps": 1.0}, "steps"),
        ({"steps": True}, "steps"),
    ]:
        assert field in refused("sleep", data), data
    assert "" in refused("sleep", "not an object")


def test_fail_defaults_and_bounds() -> None:
    checked = spec("fail").check({})
    assert checked == {
        "message": "this job always fails (the 'fail' handler)",
        "times": None,
        "delay": 0.0,
    }
    assert spec("fail").check({"times": 2, "message": "boom"})["times"] == 2
    assert "message" in refused("fail", {"message": "x" * 1001})
    assert "message" in refused("fail", {"message": 7})
    assert "times" in refused("fail", {"times": 1001})
    assert "delay" in refused("fail", {"delay": 3601})


def test_data_analysis_takes_exactly_one_source() -> None:
    assert spec("data_analysis").check({"csv": "x\n1\n"}) == {
        "csv": "x\n1\n",
        "path": None,
        "chunk_rows": 1000,
    }
    assert spec("data_analysis").check({"path": "a.csv", "chunk_rows": 1})["path"] == "a.csv"
    both = refused("data_analysis", {"csv": "x", "path": "a.csv"})
    assert both == {"": "give exactly one of data.csv (inline CSV text) or data.path"}
    assert "" in refused("data_analysis", {})
    assert refused("data_analysis", {"path": "a\x00.csv"}) == {
        "path": "must be a file name inside the data directory"
    }
    assert "path" in refused("data_analysis", {"path": ""})
    assert "csv" in refused("data_analysis", {"csv": 5})
    assert "chunk_rows" in refused("data_analysis", {"csv": "x", "chunk_rows": 0})


def test_noop_takes_nothing_and_returns_none() -> None:
    noop = spec("noop")
    assert noop.check(None) == {} and noop.check({"ignored": 1}) == {}

    async def no_progress(fraction: float, message: str, extra: dict[str, Any]) -> None:
        raise AssertionError("noop reports no progress")

    ctx = JobContext(
        job_id="j", type="noop", data={}, attempt=1, report=no_progress, data_dir=Path(".")
    )
    assert asyncio.run(noop.fn(ctx)) is None
