"""The handler registry, the API handlers use to report progress, and the built-in handlers.

A handler is `async def handler(ctx: JobContext) -> result`. It reads `ctx.data`, reports with
`await ctx.progress(fraction, message)`, and returns a JSON-serialisable result; raising makes
the job retry (per its policy) and then fail. User handlers live in any module loaded with
`gateway worker --handlers my.module`:

    from gateway import JobContext, handler

    @handler("resize", timeout=60, max_attempts=5)
    async def resize(ctx: JobContext) -> dict:
        await ctx.progress(0.5, "halfway")
        return {"ok": True}
"""

from __future__ import annotations

import asyncio
import csv
import importlib
import io
import math
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ProgressReporter = Callable[[float, str, dict[str, Any]], Awaitable[None]]
Validator = Callable[[Any], Any]


class HandlerError(Exception):
    """Raised by a handler to fail the attempt with a message meant for the job's owner."""


class InvalidJobData(ValueError):
    """The job's `data` does not fit its type; answered with 422 at submission."""


class JobContext:
    """What a running handler sees of its job."""

    def __init__(
        self,
        *,
        job_id: str,
        type: str,
        data: Any,
        attempt: int,
        report: ProgressReporter,
        data_dir: Path,
    ) -> None:
        self.job_id = job_id
        self.type = type
        self.data = data
        self.attempt = attempt
        self.data_dir = data_dir
        self.cancelled = asyncio.Event()
        """Set when the job's owner asked to cancel it; a handler may stop early when it sees it."""
        self._report = report

    async def progress(self, fraction: float, message: str = "", **extra: Any) -> None:
        """Report progress (0.0-1.0) as a `job.progress` event."""
        await self._report(min(max(float(fraction), 0.0), 1.0), message, extra)


HandlerFn = Callable[[JobContext], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits up to min(cap, base * 2**(n-1))."""

    max_attempts: int | None = None
    base: float = 1.0
    cap: float = 60.0

    def delay(self, attempt: int, rand: float) -> float:
        return rand * min(self.cap, self.base * 2.0 ** max(attempt - 1, 0))


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    name: str
    fn: HandlerFn
    description: str = ""
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    validate: Validator | None = None
    example: Any = None

    def check(self, data: Any) -> Any:
        if self.validate is None:
            return data
        return self.validate(data)


class HandlerRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}

    def register(self, spec: HandlerSpec) -> None:
        self._specs[spec.name] = spec

    def get(self, name: str) -> HandlerSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[HandlerSpec]:
        return [self._specs[name] for name in self.names()]

    def load_modules(self, modules: tuple[str, ...]) -> None:
        """Import user modules; their `@handler` decorators register into `REGISTRY`.

        Modules are found in the working directory too, as `python -m` would: the `gateway`
        console script's own `sys.path` starts with its bin directory, not the project.
        """
        if modules and os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        for module in modules:
            importlib.import_module(module)


REGISTRY = HandlerRegistry()


def handler(
    name: str,
    *,
    description: str = "",
    timeout: float | None = None,
    max_attempts: int | None = None,
    backoff_base: float = 1.0,
    backoff_cap: float = 60.0,
    validate: Validator | None = None,
    example: Any = None,
    registry: HandlerRegistry | None = None,
) -> Callable[[HandlerFn], HandlerFn]:
    """Register an async handler for job type `name`."""

    def decorate(fn: HandlerFn) -> HandlerFn:
        (registry or REGISTRY).register(
            HandlerSpec(
                name=name,
                fn=fn,
                description=description or (fn.__doc__ or "").strip().split("\n")[0],
                timeout=timeout,
                retry=RetryPolicy(max_attempts, backoff_base, backoff_cap),
                validate=validate,
                example=example,
            )
        )
        return fn

    return decorate


# --- validation helpers ------------------------------------------------------------------------


def _object(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidJobData("data must be a JSON object")
    return data


def _number(data: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidJobData(f"data.{key} must be a number")
    if not low <= value <= high:
        raise InvalidJobData(f"data.{key} must be between {low:g} and {high:g}")
    return float(value)


def _integer(data: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobData(f"data.{key} must be an integer")
    if not low <= value <= high:
        raise InvalidJobData(f"data.{key} must be between {low} and {high}")
    return value


# --- built-in handlers -------------------------------------------------------------------------


def _validate_sleep(data: Any) -> dict[str, Any]:
    obj = _object(data)
    return {
        "seconds": _number(obj, "seconds", 1.0, 0, 3600),
        "steps": _integer(obj, "steps", 5, 1, 10_000),
    }


@handler(
    "sleep",
    description="Sleeps for `seconds`, reporting progress in `steps` equal steps.",
    validate=_validate_sleep,
    example={"seconds": 3, "steps": 6},
)
async def sleep_handler(ctx: JobContext) -> dict[str, Any]:
    seconds, steps = ctx.data["seconds"], ctx.data["steps"]
    for step in range(1, steps + 1):
        await asyncio.sleep(seconds / steps)
        await ctx.progress(step / steps, f"step {step} of {steps}")
    return {"slept": seconds, "steps": steps}


def _validate_fail(data: Any) -> dict[str, Any]:
    obj = _object(data)
    message = obj.get("message", "this job always fails (the 'fail' handler)")
    if not isinstance(message, str) or len(message) > 1000:
        raise InvalidJobData("data.message must be a string of at most 1000 characters")
    times = obj.get("times")
    if times is not None:
        times = _integer(obj, "times", 0, 0, 1000)
    return {"message": message, "times": times, "delay": _number(obj, "delay", 0, 0, 3600)}


@handler(
    "fail",
    description="Raises an error (after `delay` s); with `times: n` only the first n attempts.",
    validate=_validate_fail,
    backoff_base=0.2,
    backoff_cap=2.0,
    example={"message": "boom", "times": 1},
)
async def fail_handler(ctx: JobContext) -> dict[str, Any]:
    if ctx.data["delay"]:
        await asyncio.sleep(ctx.data["delay"])
    times = ctx.data["times"]
    if times is None or ctx.attempt <= times:
        raise HandlerError(ctx.data["message"])
    return {"succeeded_on_attempt": ctx.attempt}


def _validate_analysis(data: Any) -> dict[str, Any]:
    obj = _object(data)
    csv_text, path = obj.get("csv"), obj.get("path")
    if (csv_text is None) == (path is None):
        raise InvalidJobData("give exactly one of data.csv (inline CSV text) or data.path")
    if csv_text is not None and not isinstance(csv_text, str):
        raise InvalidJobData("data.csv must be a string of CSV text")
    if path is not None and (not isinstance(path, str) or not path or "\x00" in path):
        raise InvalidJobData("data.path must be a file name inside the data directory")
    return {
        "csv": csv_text,
        "path": path,
        "chunk_rows": _integer(obj, "chunk_rows", 1000, 1, 1_000_000),
    }


def resolve_data_path(data_dir: Path, name: str) -> Path:
    """A path inside `data_dir`, refusing anything that escapes it (`..`, absolute, symlinks)."""
    root = data_dir.resolve()
    candidate = (root / name).resolve()
    if not candidate.is_relative_to(root):
        raise HandlerError(f"data.path {name!r} is outside the data directory")
    if not candidate.is_file():
        raise HandlerError(f"data.path {name!r} does not exist in the data directory")
    return candidate


@dataclass(slots=True)
class ColumnStats:
    """Welford's running mean/variance, so a file of any size is summarised in one pass."""

    count: int = 0
    missing: int = 0
    non_numeric: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, raw: str) -> None:
        text = raw.strip()
        if not text:
            self.missing += 1
            return
        try:
            value = float(text)
        except ValueError:
            self.non_numeric += 1
            return
        if not math.isfinite(value):
            self.non_numeric += 1
            return
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)

    def summary(self) -> dict[str, Any]:
        numeric = self.count > 0
        return {
            "count": self.count,
            "missing": self.missing,
            "non_numeric": self.non_numeric,
            "mean": self.mean if numeric else None,
            "std": math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else None,
            "min": self.minimum if numeric else None,
            "max": self.maximum if numeric else None,
        }


@handler(
    "data_analysis",
    description="Summary statistics (count, mean, std, min, max) of each column of a CSV.",
    validate=_validate_analysis,
    example={"csv": "x,y\n1,2\n3,4\n5,6\n", "chunk_rows": 1},
)
async def data_analysis_handler(ctx: JobContext) -> dict[str, Any]:
    if ctx.data["path"] is not None:
        path = resolve_data_path(ctx.data_dir, ctx.data["path"])
        text = await asyncio.to_thread(path.read_text, "utf-8", "replace")
    else:
        text = ctx.data["csv"]
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise HandlerError("the CSV is empty")
    header, body = rows[0], rows[1:]
    columns = [ColumnStats() for _ in header]
    chunk = ctx.data["chunk_rows"]
    total_chunks = max(1, math.ceil(len(body) / chunk))
    for index in range(total_chunks):
        for row in body[index * chunk : (index + 1) * chunk]:
            for column, value in zip(columns, row, strict=False):
                column.add(value)
        await ctx.progress((index + 1) / total_chunks, f"chunk {index + 1} of {total_chunks}")
    return {
        "rows": len(body),
        "columns": {name: stats.summary() for name, stats in zip(header, columns, strict=False)},
    }
