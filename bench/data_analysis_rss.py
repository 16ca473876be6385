"""Peak memory of a real `gateway worker` running one `data_analysis` job on a generated CSV.

    python bench/data_analysis_rss.py --mb 4 --mb 20 [--pythonpath /work/main]

Starts a private redis-server, a gateway without embedded worker and one worker (all on
127.0.0.1, stopped by pid), writes a CSV of about N MB into a temporary data directory, and
reports the worker's VmHWM (peak resident set) before and after the job, and how many
`job.progress` events the job published. `--pythonpath` picks the code under test.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_csv(path: Path, megabytes: float, seed: int = 7) -> int:
    """About `megabytes` MB of `id,x,y,label` rows; returns the row count."""
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    rows = 0
    with path.open("w") as out:
        out.write("id,x,y,label\n")
        written = 0
        while written < target:
            line = f"{rows},{rng.gauss(0, 1):.6f},{rng.uniform(-1e6, 1e6):.3f},n{rows % 97}\n"
            out.write(line)
            written += len(line)
            rows += 1
    return rows


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def count_progress(url: str, job_id: str) -> int:
    """`job.progress` events in the job's history, read page by page."""
    count, since = 0, ""
    while True:
        page = httpx.get(
            f"{url}/channels/job:{job_id}/events", params={"limit": 1000, "since": since}
        ).json()
        count += sum(event["type"] == "job.progress" for event in page["events"])
        if not page["more"]:
            return count
        since = page["last_id"]


def measure(megabytes: float, pythonpath: str, chunk_rows: int) -> dict[str, float]:
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        sys.exit("redis-server is not on PATH (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        data = directory / "data"
        data.mkdir()
        rows = write_csv(data / "big.csv", megabytes)
        size = (data / "big.csv").stat().st_size
        redis_port, gateway_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(
            PYTHONPATH=pythonpath,
            REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            GATEWAY_DATA_DIR=str(data),
            GATEWAY_RETENTION="job=200000/3600",
        )
        processes: list[subprocess.Popen[bytes]] = []
        log = (directory / "log").open("wb")
        try:
            processes.append(
                subprocess.Popen(
                    [redis_binary, "--port", str(redis_port), "--save", "", "--dir", tmp],
                    stdout=subprocess.DEVNULL,
                )
            )
            serve = ["serve", "--no-embedded-worker", "--port", str(gateway_port)]
            gateway = subprocess.Popen(
                [sys.executable, "-m", "gateway", *serve],
                cwd=pythonpath,  # `python -m` puts the working directory first on sys.path
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            processes.append(gateway)
            url = f"http://127.0.0.1:{gateway_port}"
            wait_until(lambda: httpx.get(url + "/readyz").status_code == 200, 30, "gateway")
            worker = subprocess.Popen(
                [sys.executable, "-m", "gateway", "worker", "--concurrency", "1"],
                cwd=pythonpath,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            processes.append(worker)
            # Warm up: one tiny job, so imports and connections are in the baseline.
            body = {"type": "data_analysis", "data": {"csv": "a\n1\n"}}
            warm = httpx.post(url + "/jobs", json=body).json()["id"]
            wait_until(
                lambda: httpx.get(f"{url}/jobs/{warm}").json()["status"] == "completed",
                30,
                "warm-up job",
            )
            before = vm_kib(worker.pid, "VmHWM")
            started = time.monotonic()
            job = httpx.post(
                url + "/jobs",
                json={
                    "type": "data_analysis",
                    "data": {"path": "big.csv", "chunk_rows": chunk_rows},
                },
            ).json()["id"]
            wait_until(
                lambda: httpx.get(f"{url}/jobs/{job}").json()["status"] in {"completed", "failed"},
                600,
                "the job",
            )
            elapsed = time.monotonic() - started
            after = vm_kib(worker.pid, "VmHWM")
            record = httpx.get(f"{url}/jobs/{job}").json()
            progress = count_progress(url, job)
            return {
                "mb": size / 1e6,
                "rows": rows,
                "status_ok": float(record["status"] == "completed"),
                "hwm_before_mib": before / 1024,
                "hwm_after_mib": after / 1024,
                "delta_mib": (after - before) / 1024,
                "seconds": elapsed,
                "progress_events": progress,
            }
        finally:
            for process in reversed(processes):
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, action="append", help="CSV size(s) in MB")
    parser.add_argument("--pythonpath", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--chunk-rows", type=int, default=1000)
    args = parser.parse_args()
    for megabytes in args.mb or [4.0, 20.0]:
        figures = measure(megabytes, args.pythonpath, args.chunk_rows)
        print(" ".join(f"{k}={v:.1f}" for k, v in figures.items()), flush=True)


if __name__ == "__main__":
    main()
