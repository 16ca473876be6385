"""The built-in job types: `sleep` and `fail` (demos, and the tests' workhorses), `noop` (does
nothing: the benchmarks' job) and `data_analysis` (streamed CSV statistics), each with the input
model its `data` must fit.

Loaded into `REGISTRY` before any user module (`HandlerRegistry.load_modules`).
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.errors import HandlerError
from gateway.jobs.registry import JobContext, handler


class JobInput(BaseModel):
    """Strict like JSON: `"5"` is not a number, `true` is not an integer; unknown keys are
    dropped (the stored `data` is what the model kept)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class SleepInput(JobInput):
    seconds: float = Field(1.0, ge=0, le=3600, allow_inf_nan=False, description="total sleep")
    steps: int = Field(5, ge=1, le=10_000, description="progress reports, evenly spaced")


@handler(
    "sleep",
    input=SleepInput,
    description="Sleeps for `seconds`, reporting progress in `steps` equal steps.",
    example={"seconds": 3, "steps": 6},
)
async def sleep_handler(ctx: JobContext) -> dict[str, Any]:
    data = ctx.data_as(SleepInput)
    seconds, steps = data.seconds, data.steps
    for step in range(1, steps + 1):
        await asyncio.sleep(seconds / steps)
        await ctx.progress(step / steps, f"step {step} of {steps}")
    return {"slept": seconds, "steps": steps}


class NoopInput(JobInput):
    """Takes nothing; any keys given are dropped."""


@handler(
    "noop",
    input=NoopInput,
    description="Does nothing and returns null at once (what the benchmarks run).",
    example={},
)
async def noop_handler(ctx: JobContext) -> None:
    return None


class FailInput(JobInput):
    message: str = Field(
        "this job always fails (the 'fail' handler)",
        max_length=1000,
        description="the error the job fails with",
    )
    times: int | None = Field(
        None, ge=0, le=1000, description="fail only the first `times` attempts; null: all"
    )
    delay: float = Field(
        0.0, ge=0, le=3600, allow_inf_nan=False, description="seconds before failing"
    )


@handler(
    "fail",
    input=FailInput,
    description="Raises an error (after `delay` s); with `times: n` only the first n attempts.",
    backoff_base=0.2,
    backoff_cap=2.0,
    example={"message": "boom", "times": 1},
)
async def fail_handler(ctx: JobContext) -> dict[str, Any]:
    data = ctx.data_as(FailInput)
    if data.delay:
        await asyncio.sleep(data.delay)
    if data.times is None or ctx.attempt <= data.times:
        raise HandlerError(data.message)
    return {"succeeded_on_attempt": ctx.attempt}


class DataAnalysisInput(JobInput):
    """Exactly one of `csv` (inline CSV text) or `path` (a file in GATEWAY_DATA_DIR)."""

    csv: str | None = Field(None, description="inline CSV text, header first")
    path: str | None = Field(
        None, min_length=1, description="a file name inside the data directory"
    )
    chunk_rows: int = Field(
        1000, ge=1, le=1_000_000, description="rows between progress reports (at most 1,000)"
    )

    @field_validator("path")
    @classmethod
    def _no_nul(cls, path: str | None) -> str | None:
        if path is not None and "\x00" in path:
            raise ValueError("must be a file name inside the data directory")
        return path

    @model_validator(mode="after")
    def _one_source(self) -> DataAnalysisInput:
        if (self.csv is None) == (self.path is None):
            raise ValueError("give exactly one of data.csv (inline CSV text) or data.path")
        return self


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


def _open_input(ctx: JobContext, data: DataAnalysisInput) -> CsvLines:
    if data.path is not None:
        path = resolve_data_path(ctx.data_dir, data.path)
        stream: TextIO = path.open(encoding="utf-8-sig", errors="replace", newline="")
        return CsvLines(stream, path.stat().st_size)
    text = data.csv or ""
    return CsvLines(io.StringIO(text, newline=""), len(text))


@handler(
    "data_analysis",
    input=DataAnalysisInput,
    description="Summary statistics (count, mean, std, min, max) of each column of a CSV.",
    example={"csv": "x,y\n1,2\n3,4\n5,6\n", "chunk_rows": 1},
)
async def data_analysis_handler(ctx: JobContext) -> dict[str, Any]:
    """Streams the CSV row by row: memory does not grow with the file (no median, which would
    need every value), and progress is paced by `ProgressPacer`."""
    data = ctx.data_as(DataAnalysisInput)
    lines = _open_input(ctx, data)
    pacer = ProgressPacer(data.chunk_rows, lines.size)
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
