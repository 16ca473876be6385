"""What the job-queue integration tests share: the README's examples, queue worker processes,
and following a task's job over SSE and WebSocket at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.support import collect_sse, wait_until, ws_client, ws_send, ws_until

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
TERMINAL = {"job.completed", "job.failed", "job.cancelled"}


def run_readme_app(app_dir: Path, env: Mapping[str, str]) -> str:
    """Run the README's app (`resizer.py`, written into `app_dir`) as a user would; it prints
    the job's status path last. Returns the job id (the task id)."""
    sent = subprocess.run(
        [sys.executable, "resizer.py"], cwd=app_dir, env=env, capture_output=True, text=True
    )
    assert sent.returncode == 0, sent.stderr
    return sent.stdout.strip().splitlines()[-1].split("/")[2]


def readme_example(heading: str) -> str:
    """The first python block under `heading` in the README section on job queues."""
    section = README.split("## Follow your Celery/RQ/arq jobs", 1)[1].split("\n## ", 1)[0]
    part = section.split(heading, 1)[1]
    match = re.search(r"```python\n(.*?)```", part, re.S)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


class QueueWorker:
    """A queue's worker (celery, rq, arq) as a process group of its own, so a SIGKILL takes
    the worker and every process it forked, as a machine or container dying would."""

    def __init__(
        self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str], log_path: Path
    ) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready: str | None = None, timeout: float = 30.0) -> QueueWorker:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if ready is not None:

            def is_ready() -> bool:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.args[0]} exited:\n{self.output()}")
                return ready.encode() in self.log_path.read_bytes()[offset:]

            try:
                wait_until(is_ready, timeout, f"{' '.join(self.args[:3])} to be ready")
            except BaseException:
                self.stop()
                raise
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the worker and every process it forked, all frozen first so that none sees
        another die and reacts (RQ's worker would report its work horse's death; the horse
        runs in a process group of its own, so the group alone would leave it running)."""
        if self.process is not None:
            processes = [self.process.pid, *descendants(self.process.pid)]
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in processes:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass
        self.process = None


def descendants(pid: int) -> list[int]:
    """The processes under `pid`, from /proc (children found by their parent's id)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def worker_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["REDIS_URL"] = redis_url
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


async def follow(
    gateway_url: str, ws_url: str, job_id: str, timeout: float = 30.0, token: str | None = None
) -> Any:
    """The job's events as SSE (`/jobs/{id}/events`, which ends at the terminal event) and as
    WebSocket frames (subscribed to `job:<id>`), followed at the same time; with the job's
    `token` as a browser passes it (`?token=` for EventSource, in the subscribe op).

    Returns (SSE event types, WebSocket event types, the terminal event's data)."""
    query = f"?token={token}" if token else ""

    async def over_ws() -> list[dict[str, Any]]:
        async with ws_client(ws_url) as ws:
            op: dict[str, Any] = {"op": "subscribe", "channel": f"job:{job_id}", "ref": 1}
            if token:
                op["token"] = token
            await ws_send(ws, op)
            frames = await ws_until(
                ws, lambda f: f.get("op") == "event" and f.get("type") in TERMINAL, timeout
            )
            return [frame for frame in frames if frame.get("op") == "event"]

    sse, ws_events = await asyncio.gather(
        collect_sse(f"{gateway_url}/jobs/{job_id}/events{query}", timeout=timeout), over_ws()
    )
    sse_types = [event.event for event in sse]
    assert [event.json()["id"] for event in sse] == [frame["id"] for frame in ws_events]
    return sse_types, [frame["type"] for frame in ws_events], ws_events[-1]["data"]


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def job(gateway_url: str, job_id: str, token: str | None = None) -> dict[str, Any]:
    response = httpx.get(f"{gateway_url}/jobs/{job_id}", headers=bearer(token), timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for_job(
    gateway_url: str, job_id: str, status: str, timeout: float = 20.0, token: str | None = None
) -> None:
    def reached() -> bool:
        response = httpx.get(f"{gateway_url}/jobs/{job_id}", headers=bearer(token), timeout=5)
        return response.status_code == 200 and response.json()["status"] == status

    wait_until(reached, timeout, f"job {job_id} to be {status}")


def history(gateway_url: str, job_id: str, token: str | None = None) -> list[dict[str, Any]]:
    url = f"{gateway_url}/channels/job:{job_id}/events"
    response = httpx.get(url, headers=bearer(token), timeout=5)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def history_types(gateway_url: str, job_id: str, token: str | None = None) -> list[str]:
    return [event["type"] for event in history(gateway_url, job_id, token)]
