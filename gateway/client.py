"""A small synchronous client for scripts and terminals: submit, follow a job, follow a channel.

Follows over SSE and resumes with `Last-Event-ID` after a dropped connection (a gateway restart,
a proxy timeout, a slow-consumer cut-off), so a long `gateway follow` or `gateway submit --follow`
survives them without losing or repeating events. A link that dies silently (no FIN, no RST) is
noticed too: the stream is asked for a heartbeat every `heartbeat` seconds, and twice that of
silence counts as a dead connection.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote

import httpx
import orjson

from gateway.errors import ClientError
from gateway.vocabulary import JOB_TERMINAL_TYPES, CloseCode, EventType, JobStatus

RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 10.0
BAR_WIDTH = 30
HEARTBEAT = 4.0
"""Seconds between the heartbeats a stream is asked for; 2x that of silence means a dead link."""
JOB_EXIT_CODES = {
    kind.value: 0 if kind is EventType.COMPLETED else 1 for kind in JOB_TERMINAL_TYPES
}
"""The exit code of `submit --follow` and `follow job:<id>` for each event that ends a job."""


def _headers(token: str | None = None) -> dict[str, str]:
    """A channel token when given (a user's stream), else `GATEWAY_API_KEY` if set."""
    key = token or os.environ.get("GATEWAY_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: {response.text[:500]}"
    if isinstance(body, dict) and body.get("detail"):
        return f"{response.status_code} {body.get('title', '')}: {body['detail']}"
    return f"{response.status_code}: {response.text[:500]}"


def submit_job(url: str, type_: str, data: Any) -> dict[str, Any]:
    """`POST /jobs`; exits with the gateway's problem detail if it refuses."""
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/jobs",
            json={"type": type_, "data": data},
            headers=_headers(),
            timeout=30,
        )
    except httpx.HTTPError as exc:
        sys.exit(f"gateway submit: cannot reach {url}: {exc}")
    if response.status_code != 202:
        sys.exit(f"gateway submit: {_problem(response)}")
    job: dict[str, Any] = response.json()
    return job


@dataclass(frozen=True, slots=True)
class Frame:
    """One SSE frame: `event:` name, `id:` (None for signals) and the decoded data."""

    event: str
    id: str | None
    data: Any


def _frames(lines: Iterator[str]) -> Iterator[Frame]:
    event, event_id, data = "message", None, list[str]()
    for line in lines:
        if line == "":
            decoded = _decode("\n".join(data)) if data else None
            if decoded is not None:
                yield Frame(event, event_id, decoded)
            event, event_id, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


def _decode(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def stream_events(
    url: str,
    path: str,
    since: str | None,
    *,
    log: TextIO | None = None,
    heartbeat: float = HEARTBEAT,
    token: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield event envelopes from an SSE stream, reconnecting and resuming after failures.

    Ends when the gateway ends the stream for good (`204` for a job that already ended, or a
    `disconnected` message with code 4001: the server disconnected this user); a
    stream that just stops (restart, slow consumer, network) is resumed with `Last-Event-ID`,
    and so is one that says nothing for `2 * heartbeat` seconds (a silently dead link).
    """
    log = log or sys.stderr
    last_id = since
    delay = RECONNECT_INITIAL
    path += ("&" if "?" in path else "?") + f"heartbeat={heartbeat:g}"
    timeout = httpx.Timeout(10, read=2 * heartbeat)
    while True:
        headers = {"Accept": "text/event-stream", **_headers(token)}
        if last_id:
            headers["Last-Event-ID"] = last_id
        retry_hint: float | None = None
        try:
            with httpx.stream(
                "GET", url.rstrip("/") + path, headers=headers, timeout=timeout
            ) as response:
                if response.status_code == 204:
                    return
                if response.status_code >= 400:
                    response.read()
                    if response.status_code < 500 and response.status_code != 429:
                        raise ClientError(_problem(response))
                    print(f"gateway answered {_problem(response)}; retrying", file=log)
                else:
                    delay = RECONNECT_INITIAL
                    for frame in _frames(response.iter_lines()):
                        if not isinstance(frame.data, dict):
                            continue
                        if frame.id is not None:
                            last_id = frame.id
                            yield frame.data
                            continue
                        # A signal: no id, its `type` says which.
                        kind = frame.data.get("type")
                        if kind == "shutdown":
                            retry_hint = _retry_seconds(frame.data)
                            print("the gateway is restarting; resuming", file=log)
                        elif kind == "gap":
                            print(
                                f"warning: history before {frame.data.get('since')} was trimmed;"
                                " some events are gone",
                                file=log,
                            )
                        elif kind == "error":
                            print(f"gateway: {frame.data.get('message')}; resuming", file=log)
                        elif kind == "disconnected":
                            reason = frame.data.get("reason")
                            if frame.data.get("code") == CloseCode.DISCONNECTED:
                                raise ClientError(f"disconnected by the server: {reason}")
                            print(f"disconnected by the server ({reason}); resuming", file=log)
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            print(f"connection lost ({exc.__class__.__name__}); resuming", file=log)
        time.sleep(retry_hint if retry_hint is not None else delay)
        delay = min(delay * 2, RECONNECT_MAX)


def _retry_seconds(data: Any) -> float | None:
    if isinstance(data, dict) and isinstance(data.get("retry"), int | float):
        return min(float(data["retry"]) / 1000, RECONNECT_MAX)
    return None


class ProgressBar:
    """`[######....]  40% message` on stderr: redrawn in place on a terminal, a line otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.drawn = False

    def draw(self, fraction: float, message: str) -> None:
        fraction = max(0.0, min(1.0, fraction))
        filled = round(fraction * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        line = f"[{bar}] {fraction:4.0%} {message[:40]}"
        if self.tty:
            self.out.write(f"\r{line:<80}")
            self.drawn = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def say(self, text: str) -> None:
        self.finish()
        self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.drawn = False


def follow_job(url: str, job_id: str, heartbeat: float = HEARTBEAT) -> int:
    """Show a progress bar until the job ends; print the result. Exit code: 0 completed, else 1."""
    bar = ProgressBar(sys.stderr)
    bar.say(f"job {job_id}: following {url.rstrip('/')}/jobs/{job_id}/events")
    try:
        return _follow_job(bar, url, job_id, heartbeat)
    except ClientError as exc:
        bar.say(f"gateway submit: {exc}")
        return 1


def _follow_job(bar: ProgressBar, url: str, job_id: str, heartbeat: float) -> int:
    for event in stream_events(url, f"/jobs/{job_id}/events", None, heartbeat=heartbeat):
        kind = event.get("type")
        raw = event.get("data")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if kind == EventType.STARTED:
            bar.say(f"started (attempt {data.get('attempt', 1)})")
            bar.draw(0.0, "")
        elif kind == EventType.PROGRESS:
            bar.draw(float(data.get("progress") or 0), str(data.get("message") or ""))
        elif kind == EventType.RETRYING:
            bar.say(f"retrying after error: {_error_text(data.get('error'))}")
        elif kind == EventType.COMPLETED:
            bar.draw(1.0, JobStatus.COMPLETED)
            bar.finish()
            print(orjson.dumps(data.get("result"), option=orjson.OPT_INDENT_2).decode())
            return 0
        elif kind == EventType.FAILED:
            bar.say(f"job {job_id} failed: {_error_text(data.get('error'))}")
            return 1
        elif kind == EventType.CANCELLED:
            bar.say(f"job {job_id} cancelled: {data.get('reason', '')}")
            return 1
    bar.say(f"job {job_id}: the stream ended before the job did")
    return 1


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or orjson.dumps(error).decode())
    return str(error)


def follow_channel(
    url: str,
    channel: str | None,
    since: str | None,
    heartbeat: float = HEARTBEAT,
    token: str | None = None,
) -> int | None:
    """Print a channel's events as JSON lines, resuming across disconnects.

    A room or user channel is followed until interrupted. A job's channel (`job:<id>`) is
    followed until the job ends, like `submit --follow`: the exit code is 0 when it completed,
    1 when it failed or was cancelled. Without a channel, the `token`'s server-side
    subscriptions are followed (`/events` with the token alone, docs/control.md).
    """
    job_id = channel.removeprefix("job:") if channel and channel.startswith("job:") else None
    if job_id is not None:
        path = f"/jobs/{quote(job_id, safe='')}/events"
    elif channel is None:
        path = "/events"
    else:
        path = f"/events?channel={quote(channel, safe=':')}"
    try:
        for event in stream_events(url, path, since, heartbeat=heartbeat, token=token):
            sys.stdout.write(orjson.dumps(event).decode() + "\n")
            sys.stdout.flush()
            if job_id is not None and event.get("type") in JOB_EXIT_CODES:
                return JOB_EXIT_CODES[event["type"]]
        # The gateway answered 204: the job had already ended at `since`.
        return _job_exit_code(url, job_id) if job_id is not None else None
    except ClientError as exc:
        sys.exit(f"gateway follow: {exc}")


def _job_exit_code(url: str, job_id: str) -> int:
    try:
        response = httpx.get(f"{url.rstrip('/')}/jobs/{job_id}", headers=_headers(), timeout=10)
    except httpx.HTTPError as exc:
        sys.exit(f"gateway follow: cannot reach {url}: {exc}")
    if response.status_code != 200:
        sys.exit(f"gateway follow: {_problem(response)}")
    return 0 if response.json().get("status") == JobStatus.COMPLETED else 1
