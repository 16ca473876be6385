"""gateway.js in a real browser: connections per browser with N tabs, and time to resume after
`online`, for the gateway.js of this checkout and for an earlier one (a git revision).

    python -m bench.browser_tabs --tabs 8 --runs 5 [--before 3f88aad]

Starts a gateway (memory backend) on a free port and Debian's headless Chromium (Playwright).

- Tabs: N pages of one browser context each `connect()` and subscribe one channel, over
  WebSocket and over SSE (`transport: 'sse'`); reports the connections the gateway counts
  (`gateway_connections` on /metrics) and how many tabs received a published event. Over SSE
  and HTTP/1.1 a browser holds at most six connections to a host: the seventh tab waits.
- Resume: one tab, through a TCP proxy whose connections go silent (`tests/blackhole.py`): the
  context goes offline, the link dies without a word, an event is published, the context comes
  back online; reports the seconds from `online` to the event's arrival (default heartbeat).

The earlier gateway.js is served in place of /static/gateway.js by a Playwright route.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import sync_playwright

from tests.blackhole import BlackholeProxy
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.support import GatewayProcess, gateway_env, wait_until

ROOT = Path(__file__).resolve().parents[1]

OPEN = """async ({channel, options}) => {
  const {connect} = await import('/static/gateway.js');
  window.gw = connect(options);
  window.seen = [];
  gw.subscribe(channel, (event) => window.seen.push(event.data.n));
}"""


def connections(url: str) -> dict[str, int]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = re.findall(r'^gateway_connections{transport="(\w+)"} (\S+)$', text, re.M)
    return {transport: int(float(value)) for transport, value in found}


def serve_version(context: Any, source: str | None) -> None:
    if source is not None:
        context.route(
            re.compile(r".*/static/gateway\.js$"),
            lambda route: route.fulfill(status=200, content_type="text/javascript", body=source),
        )


def measure_tabs(browser: Any, url: str, source: str | None, tabs: int, transport: str) -> str:
    # Connections of an earlier measurement (a dead link behind the proxy) close first.
    wait_until(lambda: sum(connections(url).values()) == 0, 30, "no connections")
    context = browser.new_context()
    serve_version(context, source)
    channel = f"room:tabs-{time.monotonic_ns()}"
    pages = []
    try:
        stalled = 0
        for _ in range(tabs):
            page = context.new_page()
            try:
                # Past six SSE streams, a tab's own page may wait for a free connection.
                page.goto(url + "/healthz", timeout=3000)
            except Exception:
                stalled += 1
                continue
            page.evaluate(
                "(args) => { window.opening = (" + OPEN + ")(args); }",
                {"channel": channel, "options": {"transport": transport}},
            )
            pages.append(page)
        pages[0].wait_for_timeout(2000)  # let every tab that can connect do so
        httpx.post(f"{url}/channels/{channel}/events", json={"data": {"n": 1}}, timeout=5)
        got = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got = sum(bool(p.evaluate("(window.seen || []).includes(1)")) for p in pages)
            if got == len(pages):
                break
            if got == tabs:
                break
            pages[0].wait_for_timeout(100)
        counted = connections(url)
        return (
            f"{transport:9} {tabs} tabs: gateway counts {counted.get('ws', 0)} WebSocket + "
            f"{counted.get('sse', 0)} SSE connections; {got}/{tabs} tabs got the event"
            + (f" ({stalled} tabs never loaded)" if stalled else "")
        )
    finally:
        context.close()


def measure_resume(browser: Any, gateway: GatewayProcess, source: str | None) -> float:
    with BlackholeProxy(gateway.port) as proxy:
        context = browser.new_context()
        serve_version(context, source)
        channel = f"room:resume-{time.monotonic_ns()}"
        try:
            page = context.new_page()
            page.goto(proxy.url + "/healthz")
            page.evaluate(OPEN, {"channel": channel, "options": {}})
            page.wait_for_function("gw.state === 'open'", timeout=15_000)
            context.set_offline(True)
            proxy.blackhole()
            httpx.post(
                f"{gateway.url}/channels/{channel}/events", json={"data": {"n": 1}}, timeout=5
            )
            started = time.monotonic()
            context.set_offline(False)
            page.wait_for_function("window.seen.includes(1)", timeout=60_000, polling=10)
            return time.monotonic() - started
        finally:
            context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tabs", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5, help="resume measurements per version")
    parser.add_argument("--before", default="3f88aad", help="git revision of the earlier client")
    args = parser.parse_args()
    before = subprocess.run(
        ["git", "show", f"{args.before}:static/gateway.js"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        gateway = GatewayProcess(gateway_env(), Path(tmp) / "gateway.log")
        gateway.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for name, source in ((f"before ({args.before})", before), ("now", None)):
                    print(f"== gateway.js {name}")
                    for transport in ("websocket", "sse"):
                        print(measure_tabs(browser, gateway.url, source, args.tabs, transport))
                    times = [measure_resume(browser, gateway, source) for _ in range(args.runs)]
                    print(
                        f"resume after online: median {statistics.median(times):.2f} s, "
                        f"max {max(times):.2f} s over {len(times)} runs "
                        f"({', '.join(f'{t:.2f}' for t in times)})"
                    )
                browser.close()
        finally:
            gateway.stop(5)


if __name__ == "__main__":
    main()
