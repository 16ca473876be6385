"""A small synchronous client for scripts and terminals: submit, follow a job, follow a channel.

Follows over SSE and resumes with `Last-Event-ID` after a dropped connection, so a long
`gateway follow` survives gateway restarts without losing or repeating events.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson


class ClientError(RuntimeError):
    """The gateway refused a request; the message carries its problem detail."""


def _headers() -> dict[str, str]:
    key = os.environ.get("GATEWAY_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def submit_job(url: str, type_: str, data: Any) -> dict[str, Any]:
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
        sys.exit(f"gateway submit: {response.status_code}: {response.text}")
    job: dict[str, Any] = response.json()
    return job


def stream_events(
    url: str, path: str, since: str | None, *, once: bool = False
) -> Iterator[dict[str, Any]]:
    """Yield event envelopes from an SSE stream, reconnecting and resuming on failures."""
    last_id = since
    delay = 0.5
    while True:
        headers = {"Accept": "text/event-stream", **_headers()}
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            with httpx.stream(
                "GET", url.rstrip("/") + path, headers=headers, timeout=httpx.Timeout(10, read=60)
            ) as response:
                if response.status_code == 204:
                    return
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(f"{response.status_code}: {response.text}")
                delay = 0.5
                event_id, data = None, None
                for line in response.iter_lines():
                    if line.startswith("id: "):
                        event_id = line[4:]
                    elif line.startswith("data: "):
                        data = line[6:]
                    elif line == "" and data is not None:
                        envelope = orjson.loads(data)
                        if event_id is not None:
                            last_id = event_id
                            yield envelope
                        event_id, data = None, None
            if once:
                return
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            print(f"connection lost ({exc.__class__.__name__}); resuming", file=sys.stderr)
        time.sleep(delay)
        delay = min(delay * 2, 10)


def follow_job(url: str, job_id: str) -> int:
    """Show a progress bar until the job ends; return the exit code (0 completed, 1 otherwise)."""
    status = 1
    for event in stream_events(url, f"/jobs/{job_id}/events", None, once=True):
        kind, data = event["type"], event.get("data") or {}
        if kind == "job.progress":
            fraction = float(data.get("progress", 0))
            bar = "#" * int(fraction * 30)
            print(
                f"\r[{bar:<30}] {fraction:6.1%} {data.get('message', '')[:40]:<40}",
                end="",
                file=sys.stderr,
                flush=True,
            )
        elif kind == "job.completed":
            print(file=sys.stderr)
            print(orjson.dumps(data.get("result"), option=orjson.OPT_INDENT_2).decode())
            status = 0
        elif kind in {"job.failed", "job.cancelled"}:
            print(file=sys.stderr)
            print(
                f"job {job_id} {kind.split('.')[1]}: {orjson.dumps(data.get('error')).decode()}",
                file=sys.stderr,
            )
        elif kind == "job.retrying":
            print(f"\nretrying: {data.get('error', {}).get('message')}", file=sys.stderr)
    return status


def follow_channel(url: str, channel: str, since: str | None) -> None:
    for event in stream_events(url, f"/events?channel={quote(channel, safe=':')}", since):
        sys.stdout.write(orjson.dumps(event).decode() + "\n")
        sys.stdout.flush()
