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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from gateway.errors import HandlerError, InvalidJobData

ProgressReporter = Callable[[float, str, dict[str, Any]], Awaitable[None]]
Validator = Callable[[Any], Any]


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


MAX_PROGRESS_EVENTS: Final = 1000
"""Progress events one `data_analysis` job publishes at most, whatever `chunk_rows` asks for:
one per 0.1% of the input read (a 50,000-row file with `chunk_rows: 1` is not 50,000 events)."""

MAX_RECORD_CHARS: Final = 1 << 20
"""Longest CSV record (one row, possibly over several quoted lines) read; longer fails the job,
so a file without line breaks cannot make the worker hold all of it at once."""

MAX_COLUMNS: Final = 1000
"""Most columns summarised; a wider header fails the job (the result would be huge)."""

YIELD_EVERY: Final = 0.02
"""Seconds of parsing between two yields to the event loop, so the worker's other jobs, its
lease renewals and its webhook deliveries carry on while a large file is read."""


class CsvLines:
    """The lines of a CSV input, read only as the parser asks for them.

    Memory stays bounded whatever the input's size; it counts how much was read (for progress)
    and refuses a record longer than `MAX_RECORD_CHARS`.
    """

    def __init__(self, stream: TextIO, size: int) -> None:
        self.stream = stream
        self.size = size
        self.consumed = 0
        self.record_chars = 0
        """Characters of the record being parsed; the reader resets it after each row."""

    def __iter__(self) -> CsvLines:
        return self

    def __next__(self) -> str:
        line = self.stream.readline(MAX_RECORD_CHARS + 1 - self.record_chars)
        if not line:
            raise StopIteration
        self.consumed += len(line)
        self.record_chars += len(line)
        if self.record_chars > MAX_RECORD_CHARS:
            raise HandlerError(f"a CSV record is longer than {MAX_RECORD_CHARS} characters")
        return line

    @property
    def fraction(self) -> float:
        """How much of the input was read (characters over bytes for files: close enough)."""
        return min(self.consumed / self.size, 1.0) if self.size else 1.0


@dataclass(slots=True)
class ColumnStats:
    """Running count, mean, standard deviation, min and max of one column, in one pass.

    Welford's update, made overflow-proof: the difference from the mean is taken of halved
    values (`1e308 - -1e308` overflows; its half does not), and the sum of squared deviations
    is kept as `4 * scale**2 * ssq` (the scaling LAPACK's dnrm2 uses), so it never overflows
    even where the variance itself is beyond a float; the standard deviation is finite or null.
    """

    count: int = 0
    missing: int = 0
    non_numeric: int = 0
    mean: float = 0.0
    scale: float = 0.0
    ssq: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, raw: str) -> None:
        try:
            value = float(raw)  # surrounding whitespace is fine with float()
        except ValueError:
            if raw.strip():
                self.non_numeric += 1
            else:
                self.missing += 1
            return
        if not math.isfinite(value):
            self.non_numeric += 1
            return
        n = self.count = self.count + 1
        if n == 1:
            self.mean = self.minimum = self.maximum = value
            return
        half_delta = value * 0.5 - self.mean * 0.5
        self.mean += (half_delta / n) * 2
        # The sum of squared deviations grows by delta**2 * (n - 1) / n, i.e. by
        # 4 * half**2 * weight; kept as 4 * scale**2 * ssq with scale the largest half seen.
        half = abs(half_delta)
        weight = (n - 1) / n
        if half > self.scale:
            ratio = self.scale / half
            self.ssq = self.ssq * ratio * ratio + weight
            self.scale = half
        elif half > 0:
            ratio = half / self.scale
            self.ssq += ratio * ratio * weight
        if value < self.minimum:
            self.minimum = value
        elif value > self.maximum:
            self.maximum = value

    @property
    def std(self) -> float | None:
        """Sample standard deviation; None below two values or beyond a float's range."""
        if self.count < 2:
            return None
        std = self.scale * (2 * math.sqrt(self.ssq / (self.count - 1)))
        return std if math.isfinite(std) else None

    def summary(self) -> dict[str, Any]:
        numeric = self.count > 0
        return {
            "count": self.count,
            "missing": self.missing,
            "non_numeric": self.non_numeric,
            "mean": self.mean if numeric else None,
            "std": self.std,
            "min": self.minimum if numeric else None,
            "max": self.maximum if numeric else None,
        }


class ProgressPacer:
    """Decides when a `data_analysis` job reports: after every `chunk_rows` rows, but only once
    another 1/`MAX_PROGRESS_EVENTS` of the input was read since the last report."""

    def __init__(self, chunk_rows: int, size: int) -> None:
        self.chunk_rows = chunk_rows
        self.size = size
        self.level = 0
        self.next_at = self._threshold(1)
        """Characters read at which the next report may come (the cheap per-row test)."""

    def _threshold(self, level: int) -> int:
        return -(-level * self.size // MAX_PROGRESS_EVENTS)

    def due(self, rows: int, consumed: int) -> bool:
        """Whether to report now, having read `rows` rows and `consumed` characters."""
        if rows % self.chunk_rows or consumed < self.next_at:
            return False
        self.level = min(consumed * MAX_PROGRESS_EVENTS // max(self.size, 1), MAX_PROGRESS_EVENTS)
        self.next_at = self._threshold(self.level + 1)
        return True

    def finish(self) -> bool:
        """Whether the end still needs its report (100% was not reported yet)."""
        done = self.level < MAX_PROGRESS_EVENTS
        self.level = MAX_PROGRESS_EVENTS
        return done


def _open_input(ctx: JobContext) -> CsvLines:
    if ctx.data["path"] is not None:
        path = resolve_data_path(ctx.data_dir, ctx.data["path"])
        stream: TextIO = path.open(encoding="utf-8-sig", errors="replace", newline="")
        return CsvLines(stream, path.stat().st_size)
    text: str = ctx.data["csv"]
    return CsvLines(io.StringIO(text, newline=""), len(text))


@handler(
    "data_analysis",
    description="Summary statistics (count, mean, std, min, max) of each column of a CSV.",
    validate=_validate_analysis,
    example={"csv": "x,y\n1,2\n3,4\n5,6\n", "chunk_rows": 1},
)
async def data_analysis_handler(ctx: JobContext) -> dict[str, Any]:
    """Streams the CSV row by row: memory does not grow with the file (no median, which would
    need every value), and progress is paced by `ProgressPacer`."""
    lines = _open_input(ctx)
    pacer = ProgressPacer(ctx.data["chunk_rows"], lines.size)
    reader = csv.reader(lines)
    rows = 0
    try:
        header = next(reader, None)
        if header is None:
            raise HandlerError("the CSV is empty")
        if len(header) > MAX_COLUMNS:
            raise HandlerError(f"the CSV has more than {MAX_COLUMNS} columns")
        columns = [ColumnStats() for _ in header]
        resume_at = time.monotonic() + YIELD_EVERY
        lines.record_chars = 0
        for row in reader:
            lines.record_chars = 0
            rows += 1
            for column, value in zip(columns, row, strict=False):
                column.add(value)
            if lines.consumed >= pacer.next_at and pacer.due(rows, lines.consumed):
                await ctx.progress(lines.fraction, f"{rows} rows read", rows=rows)
            if not rows & 255 and time.monotonic() >= resume_at:
                await asyncio.sleep(0)
                resume_at = time.monotonic() + YIELD_EVERY
    except csv.Error as exc:
        raise HandlerError(f"the CSV is malformed near line {reader.line_num}: {exc}") from None
    finally:
        lines.stream.close()
    if pacer.finish():
        await ctx.progress(1.0, f"{rows} rows read", rows=rows)
    return {
        "rows": rows,
        "columns": {name: stats.summary() for name, stats in zip(header, columns, strict=False)},
    }
