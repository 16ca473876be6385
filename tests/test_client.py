"""The terminal clients, run as real processes: `gateway submit [--follow]` and `gateway follow`."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

import httpx
import orjson
import pytest

from gateway.publish import publish
from tests.support import GatewayProcess, free_port, gateway_env

TIMEOUT = 30.0


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=gateway_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


class LineReader:
    """Lines of a child's stream, read on a thread so every wait for one can be bounded."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float = TIMEOUT) -> str:
        line = self.lines.get(timeout=timeout)
        if line is None:
            raise EOFError("the process closed its output")
        return line

    def until(self, predicate: Callable[[str], bool], timeout: float = TIMEOUT) -> list[str]:
        seen: list[str] = []
        while True:
            seen.append(self.next(timeout))
            if predicate(seen[-1]):
                return seen


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start CLI processes that the test reads while they run; all are ended afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            env=gateway_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One embedded gateway (memory backend); a job fails at its first error."""
    directory = tmp_path_factory.mktemp("client-gateway")
    process = GatewayProcess(
        gateway_env(GATEWAY_MAX_ATTEMPTS="1", GATEWAY_SSE_PING="1"), directory / "gateway.log"
    )
    process.start()
    yield process
    process.stop(5)


def test_submit_prints_the_accepted_job(gateway: GatewayProcess) -> None:
    done = run_cli(
        "submit", "sleep", "--data", '{"seconds": 0.1, "steps": 1}', "--url", gateway.url
    )
    assert done.returncode == 0, done.stderr
    job = orjson.loads(done.stdout)
    assert job["type"] == "sleep"
    assert job["status"] == "queued"
    assert job["links"]["events"] == f"/jobs/{job['id']}/events"


def test_submit_follow_draws_progress_and_prints_the_result(gateway: GatewayProcess) -> None:
    done = run_cli(
        "submit", "sleep", "--data", '{"seconds": 1, "steps": 4}', "--follow", "--url", gateway.url
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {"slept": 1, "steps": 4}
    bars = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert any("25%" in line and "step 1 of 4" in line for line in bars), done.stderr
    assert bars[-1].startswith("[" + "#" * 30 + "] 100%"), done.stderr


def test_submit_follow_exits_1_when_the_job_fails(gateway: GatewayProcess) -> None:
    done = run_cli(
        "submit", "fail", "--data", '{"message": "out of cheese"}', "--follow", "--url", gateway.url
    )
    assert done.returncode == 1
    assert "failed: out of cheese" in done.stderr
    assert done.stdout == ""


def test_submit_follow_exits_1_when_the_job_is_cancelled(
    gateway: GatewayProcess, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    data = '{"seconds": 20, "steps": 40}'
    process = spawn("submit", "sleep", "--data", data, "--follow", "--url", gateway.url)
    assert process.stderr is not None
    stderr = LineReader(process.stderr)
    first = stderr.next()
    job_id = first.split()[1].rstrip(":")
    stderr.until(lambda line: "step 1 of 40" in line)
    response = httpx.post(f"{gateway.url}/jobs/{job_id}/cancel", timeout=10)
    assert response.status_code == 200, response.text
    assert process.wait(TIMEOUT) == 1
    assert any("cancelled" in line for line in stderr.until(lambda line: "cancelled" in line))


def test_submit_refused_job_type_exits_with_the_problem(gateway: GatewayProcess) -> None:
    done = run_cli("submit", "no-such-type", "--url", gateway.url)
    assert done.returncode != 0
    assert "422" in done.stderr and "unknown job type" in done.stderr


def test_submit_reports_an_unreachable_gateway() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_cli("submit", "sleep", "--url", url)
    assert done.returncode != 0
    assert f"cannot reach {url}" in done.stderr


def test_follow_prints_json_lines_and_honours_since(
    gateway: GatewayProcess, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    channel = "room:follow-since"
    ids = [publish(channel, "message", {"n": n}, url=gateway.url, redis_url="") for n in range(3)]
    process = spawn("follow", channel, "--since", ids[0], "--url", gateway.url)
    assert process.stdout is not None
    stdout = LineReader(process.stdout)
    replayed = [orjson.loads(stdout.next()) for _ in range(2)]
    assert [event["id"] for event in replayed] == ids[1:]
    live_id = publish(channel, "message", {"n": 3}, url=gateway.url, redis_url="")
    live = orjson.loads(stdout.next())
    assert live["id"] == live_id
    assert live["data"] == {"n": 3}
    assert live["channel"] == channel and live["type"] == "message"


def test_follow_resumes_across_a_gateway_restart_without_loss_or_repeats(
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    port = free_port()
    first = gateway_factory(REDIS_URL=redis_url, port=port)
    channel = "room:follow-restart"

    def send(n: int) -> str:
        return publish(channel, "message", {"n": n}, redis_url=redis_url)

    process = spawn("follow", channel, "--url", first.url)
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = LineReader(process.stdout), LineReader(process.stderr)
    sent = [send(0)]
    assert orjson.loads(stdout.next())["id"] == sent[0]

    first.stop()
    stderr.until(lambda line: "restarting" in line or "connection lost" in line)
    sent += [send(n) for n in range(1, 4)]  # published while no gateway is up
    gateway_factory(REDIS_URL=redis_url, port=port)
    sent.append(send(4))

    received: list[dict[str, Any]] = [orjson.loads(stdout.next()) for _ in range(4)]
    assert [event["id"] for event in received] == sent[1:]
    assert [event["data"]["n"] for event in received] == [1, 2, 3, 4]
    with pytest.raises(queue.Empty):
        stdout.next(timeout=0.5)  # nothing repeated


def submit(gateway: GatewayProcess, type_: str, data: dict[str, Any]) -> str:
    response = httpx.post(f"{gateway.url}/jobs", json={"type": type_, "data": data}, timeout=10)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_follow_of_a_job_channel_exits_0_when_the_job_completes(gateway: GatewayProcess) -> None:
    """Like `submit --follow` (and curl on the job's stream): the end of the job ends it."""
    job_id = submit(gateway, "sleep", {"seconds": 0.5, "steps": 2})
    done = run_cli("follow", f"job:{job_id}", "--url", gateway.url)
    assert done.returncode == 0, done.stderr
    events = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [event["type"] for event in events] == [
        "job.queued",
        "job.started",
        "job.progress",
        "job.progress",
        "job.completed",
    ]


def test_follow_of_a_job_channel_exits_1_when_the_job_fails(gateway: GatewayProcess) -> None:
    job_id = submit(gateway, "fail", {"message": "out of cheese"})
    done = run_cli("follow", f"job:{job_id}", "--url", gateway.url)
    assert done.returncode == 1, done.stderr
    assert orjson.loads(done.stdout.splitlines()[-1])["type"] == "job.failed"


def test_follow_of_a_job_channel_exits_1_when_the_job_is_cancelled(
    gateway: GatewayProcess, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    job_id = submit(gateway, "sleep", {"seconds": 20, "steps": 40})
    process = spawn("follow", f"job:{job_id}", "--url", gateway.url)
    assert process.stdout is not None
    stdout = LineReader(process.stdout)
    stdout.until(lambda line: orjson.loads(line)["type"] == "job.progress")
    response = httpx.post(f"{gateway.url}/jobs/{job_id}/cancel", timeout=10)
    assert response.status_code == 200, response.text
    assert process.wait(TIMEOUT) == 1
    lines = stdout.until(lambda line: orjson.loads(line)["type"] == "job.cancelled")
    assert lines


def test_follow_of_a_job_that_ended_at_since_exits_with_its_outcome(
    gateway: GatewayProcess,
) -> None:
    """The gateway answers 204 (nothing after `since`): exit at once, with the job's outcome."""
    job_id = submit(gateway, "sleep", {"seconds": 0, "steps": 1})
    done = run_cli("follow", f"job:{job_id}", "--url", gateway.url)
    assert done.returncode == 0, done.stderr
    terminal = orjson.loads(done.stdout.splitlines()[-1])["id"]
    again = run_cli("follow", f"job:{job_id}", "--since", terminal, "--url", gateway.url)
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""


def test_follow_with_a_token_alone_follows_its_server_side_channels_until_disconnected(
    gateway: GatewayProcess, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    minted = httpx.post(
        gateway.url + "/tokens",
        json={"sub": "cli", "channels": {"room:*": ["subscribe"]}, "subscriptions": ["user:cli"]},
    )
    assert minted.status_code == 201, minted.text
    earlier = publish("user:cli", "note", {"n": 0}, url=gateway.url, redis_url="")
    process = spawn("follow", "--token", minted.json()["token"], "--url", gateway.url)
    assert process.stdout is not None and process.stderr is not None
    stdout = LineReader(process.stdout)
    assert orjson.loads(stdout.next())["id"] == earlier
    live = publish("user:cli", "note", {"n": 1}, url=gateway.url, redis_url="")
    assert orjson.loads(stdout.next())["id"] == live
    answer = httpx.post(gateway.url + "/users/cli/disconnect", json={"reason": "bye"})
    assert answer.json()["connections"] == 1, answer.text
    assert process.wait(TIMEOUT) == 1
    assert "disconnected by the server: bye" in process.stderr.read()


def test_follow_needs_a_channel_or_a_token() -> None:
    result = run_cli("follow", "--url", "http://127.0.0.1:9")
    assert result.returncode != 0 and "--token" in result.stderr
