"""The `data_analysis` handler: streamed input (memory does not grow with the file), statistics
that stay finite, and progress capped at 1,000 events per job; the memory figure is measured on
a real worker process."""

from __future__ import annotations

import math
import random
import statistics
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bench.data_analysis_rss import count_progress, vm_kib, write_csv
from gateway.errors import HandlerError
from gateway.jobs.builtin import (
    MAX_COLUMNS,
    MAX_PROGRESS_EVENTS,
    MAX_RECORD_CHARS,
    ColumnStats,
    data_analysis_handler,
)
from gateway.jobs.registry import JobContext
from tests.support import GatewayProcess, WorkerProcess, async_wait_until

Progress = list[tuple[float, str, dict[str, Any]]]


async def analyse(
    *, csv: str | None = None, path: Path | None = None, chunk_rows: int = 1000
) -> tuple[dict[str, Any], Progress]:
    """Run the handler as a worker would, collecting its progress reports."""
    reports: Progress = []

    async def report(fraction: float, message: str, extra: dict[str, Any]) -> None:
        reports.append((fraction, message, extra))

    ctx = JobContext(
        job_id="test",
        type="data_analysis",
        data={"csv": csv, "path": path.name if path else None, "chunk_rows": chunk_rows},
        attempt=1,
        report=report,
        data_dir=path.parent if path else Path("."),
    )
    result: dict[str, Any] = await data_analysis_handler(ctx)
    return result, reports


def assert_finite_or_null(result: dict[str, Any]) -> None:
    for summary in result["columns"].values():
        for key in ("mean", "std", "min", "max"):
            assert summary[key] is None or math.isfinite(summary[key]), (key, summary)
    orjson.dumps(result)


async def test_huge_values_give_finite_statistics_not_a_crash() -> None:
    result, _ = await analyse(csv="a,b\n1e308,-1e308\n-1e308,1e308\n")
    assert_finite_or_null(result)
    a = result["columns"]["a"]
    assert a["mean"] == 0.0 and a["min"] == -1e308 and a["max"] == 1e308
    assert a["std"] == pytest.approx(math.sqrt(2) * 1e308, rel=1e-12)
    # A standard deviation beyond a float's range is null, and the mean is still right.
    top = "1.7976931348623157e308"
    result, _ = await analyse(csv=f"x\n{top}\n-{top}\n{top}\n")
    assert_finite_or_null(result)
    x = result["columns"]["x"]
    assert x["std"] is None and x["mean"] == pytest.approx(float(top) / 3, rel=1e-12)


def test_statistics_agree_with_the_statistics_module() -> None:
    rng = random.Random(5)
    for values in (
        [rng.gauss(0, 1) for _ in range(5000)],
        [1e6 + rng.gauss(0, 1) for _ in range(5000)],  # a large offset: the naive sum of
        # squares minus the squared sum would lose most digits here
        [rng.uniform(-1e300, 1e300) for _ in range(2000)],
        [rng.choice([1e-300, 3e-300]) for _ in range(100)],
        [42.0] * 10,
    ):
        stats = ColumnStats()
        for value in values:
            stats.add(repr(value))
        assert stats.count == len(values)
        assert stats.mean == pytest.approx(statistics.fmean(values), rel=1e-9, abs=1e-300)
        assert stats.std == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-300)
        assert (stats.minimum, stats.maximum) == (min(values), max(values))


async def test_missing_and_non_numeric_cells_are_counted() -> None:
    result, _ = await analyse(csv="x,y\n1, 2 \n,nan\n3,inf\n5,abc\n")
    x, y = result["columns"]["x"], result["columns"]["y"]
    assert result["rows"] == 4
    assert (x["count"], x["missing"], x["mean"], x["std"]) == (3, 1, 3.0, 2.0)
    assert (y["count"], y["non_numeric"], y["mean"], y["std"]) == (1, 3, 2.0, None)


async def test_progress_is_capped_whatever_chunk_rows_asks() -> None:
    rows = 50_000
    text = "n\n" + "".join(f"{i}\n" for i in range(rows))
    result, reports = await analyse(csv=text, chunk_rows=1)
    assert result["rows"] == rows and result["columns"]["n"]["max"] == rows - 1
    assert 500 <= len(reports) <= MAX_PROGRESS_EVENTS
    fractions = [fraction for fraction, _, _ in reports]
    assert fractions == sorted(set(fractions)) and fractions[-1] == 1.0
    assert reports[-1][2] == {"rows": rows}


async def test_small_inputs_still_report_each_chunk() -> None:
    _, reports = await analyse(csv="x\n1\n2\n3\n4\n5\n6\n", chunk_rows=2)
    assert [extra["rows"] for _, _, extra in reports] == [2, 4, 6]


async def test_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """tracemalloc's peak while a 2 MB file is analysed: what reading it whole would take is
    well over 10 MB (the text, then every row as a list). tracemalloc slows the run ~5x, so the
    file is no bigger than it takes to tell the two apart."""
    path = tmp_path / "two.csv"
    write_csv(path, 2)
    tracemalloc.start()
    try:
        result, reports = await analyse(path=path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["rows"] > 50_000 and len(reports) <= MAX_PROGRESS_EVENTS
    assert peak < 2 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


async def test_a_record_without_line_breaks_fails_instead_of_filling_memory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "one-line.csv"
    path.write_text("x\n" + "1," * MAX_RECORD_CHARS)
    with pytest.raises(HandlerError, match="longer than"):
        await analyse(path=path)
    # The same over quoted multi-line fields: a record is bounded, not just a line.
    many = "x\n" + '"a\nb",' * (MAX_RECORD_CHARS // 4)
    with pytest.raises(HandlerError, match="longer than"):
        await analyse(csv=many)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "empty"),
        (",".join(f"c{i}" for i in range(MAX_COLUMNS + 1)) + "\n1\n", "columns"),
        ("x\n" + "9" * 200_000 + "\n", "malformed"),  # a field over csv's field size limit
    ],
)
async def test_bad_inputs_fail_with_a_message(text: str, error: str) -> None:
    with pytest.raises(HandlerError, match=error):
        await analyse(csv=text)


async def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffx,y\r\n1,2\r\n3,4\r\n".encode())
    result, _ = await analyse(path=path)
    assert set(result["columns"]) == {"x", "y"} and result["columns"]["x"]["mean"] == 2.0


# --- a real worker -------------------------------------------------------------------------------

RSS_BUDGET_MIB = 32
"""Growth of the worker's peak resident set allowed for an 8 MB file; reading it whole takes
~125 MiB (a 20 MB file took ~310 MiB; bench/data_analysis_rss.py measures any size)."""


async def test_worker_peak_memory_and_progress_on_an_8_mb_csv(
    tmp_path: Path,
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rows = write_csv(data / "big.csv", 8)
    env = {"REDIS_URL": redis_url, "GATEWAY_DATA_DIR": str(data)}
    gateway = gateway_factory(**env)
    worker = worker_factory(args=["--concurrency", "1"], **env)
    assert worker.process is not None
    url = gateway.url

    def finished(job_id: str) -> bool:
        return httpx.get(f"{url}/jobs/{job_id}").json()["status"] in {"completed", "failed"}

    warm = httpx.post(url + "/jobs", json={"type": "data_analysis", "data": {"csv": "a\n1\n"}})
    await async_wait_until(lambda: finished(warm.json()["id"]), 30, "the warm-up job")
    before = vm_kib(worker.process.pid, "VmHWM")
    body = {"type": "data_analysis", "data": {"path": "big.csv", "chunk_rows": 1}}
    job_id = httpx.post(url + "/jobs", json=body).json()["id"]
    await async_wait_until(lambda: finished(job_id), 300, "the 8 MB job")
    grown_mib = (vm_kib(worker.process.pid, "VmHWM") - before) / 1024
    record = httpx.get(f"{url}/jobs/{job_id}").json()
    assert record["status"] == "completed", record
    result = httpx.get(f"{url}/jobs/{job_id}/result").json()["result"]
    assert result["rows"] == rows
    assert grown_mib < RSS_BUDGET_MIB, f"the worker's peak RSS grew by {grown_mib:.1f} MiB"
    progress = count_progress(url, job_id)
    assert 100 <= progress <= MAX_PROGRESS_EVENTS, progress
