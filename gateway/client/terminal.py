"""`gateway submit [--follow]` and `gateway follow`: the terminal's view of `Client`.

Events go to stdout (one JSON envelope a line) and everything about the connection to stderr,
so `gateway follow room:x | jq` sees only events. A job's outcome is the exit code
(`JOB_EXIT_CODES`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any, Final, TextIO

import orjson

from gateway.client.client import Client
from gateway.client.connection import HEARTBEAT, ConnectionStatus
from gateway.client.items import Event, Gap
from gateway.client.subscription import Subscription
from gateway.errors import ClientError, Disconnected
from gateway.vocabulary import JOB_TERMINAL_TYPES, EventType, JobStatus

BAR_WIDTH: Final = 30
JOB_EXIT_CODES: Final = {
    kind.value: 0 if kind is EventType.COMPLETED else 1 for kind in JOB_TERMINAL_TYPES
}
"""The exit code of `submit --follow` and `follow job:<id>` for each event that ends a job."""


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


def status_reporter(out: TextIO) -> Callable[[ConnectionStatus], None]:
    """An `on_status` callback that says on `out` why the stream is being resumed."""

    def report(status: ConnectionStatus) -> None:
        if status.state != "reconnecting":
            return
        if status.restarting:
            out.write("the gateway is restarting; resuming\n")
        else:
            out.write(f"connection lost ({status.reason}); resuming\n")
        out.flush()

    return report


def _gap_warning(gap: Gap) -> str:
    return f"warning: events after {gap.since} were trimmed from history; some are gone"


async def submit(
    url: str,
    type_: str,
    data: Any,
    *,
    follow: bool,
    api_key: str | None,
    heartbeat: float = HEARTBEAT,
) -> int:
    """`gateway submit`: print the accepted job, or follow it to its end (exit code)."""
    bar = ProgressBar(sys.stderr)
    reporter = status_reporter(sys.stderr)
    async with Client(url, api_key=api_key, heartbeat=heartbeat, on_status=reporter) as gw:
        try:
            job = await gw.submit(type_, data)
        except ClientError as exc:
            sys.exit(f"gateway submit: {exc}")
        if not follow:
            print(orjson.dumps(job.resource, option=orjson.OPT_INDENT_2).decode())
            return 0
        bar.say(f"job {job.id}: following {job.channel} on {gw.url}")
        try:
            async for item in gw.follow(job):
                if isinstance(item, Gap):
                    bar.say(_gap_warning(item))
                elif (code := _draw(bar, job.id, item)) is not None:
                    return code
        except ClientError as exc:
            bar.say(f"gateway submit: {exc}")
            return 1
    bar.say(f"job {job.id}: the stream ended before the job did")
    return 1


def _draw(bar: ProgressBar, job_id: str, event: Event) -> int | None:
    data: dict[str, Any] = event.data if isinstance(event.data, dict) else {}
    kind = event.type
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
    return None


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or orjson.dumps(error).decode())
    return str(error)


async def follow(
    url: str,
    channel: str | None,
    since: str | None,
    *,
    api_key: str | None,
    token: str | None = None,
    heartbeat: float = HEARTBEAT,
) -> int | None:
    """`gateway follow`: print a channel's events as JSON lines, resuming across disconnects.

    A room or user channel is followed until interrupted. A job's channel (`job:<id>`) is
    followed until the job ends, like `submit --follow`: the exit code is 0 when it completed,
    1 when it failed or was cancelled (also when it had ended already at `since`). Without a
    channel, the `token`'s server-side subscriptions are followed (docs/control.md) until the
    server disconnects its user (4001: exit 1).
    """
    job_id = channel.removeprefix("job:") if channel and channel.startswith("job:") else None
    reporter = status_reporter(sys.stderr)
    async with Client(
        url, token=token, api_key=api_key, heartbeat=heartbeat, on_status=reporter
    ) as gw:
        try:
            if channel is None:
                await _follow_server_side(gw)
                return None
            if job_id is None:
                async for item in gw.subscribe(channel, since):
                    _print(item)
                return None
            async for item in gw.follow(job_id, since=since):
                _print(item)
                if isinstance(item, Event) and item.ends_job:
                    return JOB_EXIT_CODES[item.type]
            # The job had ended at `since` already: its outcome, from its record.
            return 0 if (await gw.job(job_id)).status == JobStatus.COMPLETED else 1
        except Disconnected as exc:
            sys.exit(f"gateway follow: disconnected by the server: {exc.reason}")
        except ClientError as exc:
            sys.exit(f"gateway follow: {exc}")


async def _follow_server_side(gw: Client) -> None:
    """Print the events of every server-side subscription as it is announced, until one of
    them ends with an error (a 4001 disconnect ends them all)."""
    failed: asyncio.Future[ClientError] = asyncio.get_running_loop().create_future()
    printers: set[asyncio.Task[None]] = set()

    async def print_all(subscription: Subscription) -> None:
        try:
            async for item in subscription:
                _print(item)
        except ClientError as exc:
            if not failed.done():
                failed.set_result(exc)

    async def announce() -> None:
        async for subscription in gw.server_subscriptions():
            printer = asyncio.create_task(print_all(subscription))
            printers.add(printer)
            printer.add_done_callback(printers.discard)

    announcer = asyncio.create_task(announce())
    try:
        raise await failed
    finally:
        announcer.cancel()
        for printer in list(printers):
            printer.cancel()


def _print(item: Event | Gap) -> None:
    if isinstance(item, Gap):
        sys.stderr.write(_gap_warning(item) + "\n")
        sys.stderr.flush()
        return
    sys.stdout.write(orjson.dumps(item.envelope).decode() + "\n")
    sys.stdout.flush()
