"""The dashboard and gateway.js in a real browser (Debian's Chromium) against real gateways.

The module's gateway is shared: every test's jobs are listed in every later page (the table
lists recent jobs), so tests find their rows by job id and use rooms of their own.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support import GatewayProcess, WorkerProcess, free_port, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

WAIT_MS = 15_000
ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "tests" / "node" / "node_modules" / "axe-core" / "axe.min.js"
DOCS_SCREENSHOT = ROOT / "docs" / "dashboard.png"
UPDATE_SCREENSHOT = "UPDATE_DOCS_SCREENSHOT"
"""Set (to 1) to write docs/dashboard.png from `test_traffic_chart_follows_the_metrics`."""


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def open_dashboard(context: Any, gateway: GatewayProcess, query: str = "") -> Page:
    page: Page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{gateway.url}/{query}")
    _expect()(page.locator("body")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
    _expect()(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    assert not errors, errors
    return page


def row(page: Page, job_id: str) -> Locator:
    return page.locator(f'.job-row[data-job-id="{job_id}"]')


def submit_job(page: Page, type_: str, data: str) -> str:
    """Submit a job from the form; return its id. The page shows it in the table and opens it."""
    page.select_option("#job-type", type_)
    page.fill("#job-data", data)
    with page.expect_response(
        lambda r: r.url.endswith("/jobs") and r.request.method == "POST"
    ) as answer:
        page.click("#job-submit")
    job_id: str = answer.value.json()["id"]
    _expect()(row(page, job_id)).to_be_visible(timeout=WAIT_MS)
    _expect()(page.locator("#job-detail")).to_have_attribute("data-job-id", job_id)
    return job_id


def submit_elsewhere(gateway: GatewayProcess, type_: str, data: dict[str, Any]) -> str:
    """Submit a job through the HTTP API, as a backend would (not from the page)."""
    response = httpx.post(f"{gateway.url}/jobs", json={"type": type_, "data": data}, timeout=10)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def progress_of(page: Page, job_id: str) -> int:
    value = row(page, job_id).locator("[role=progressbar]").get_attribute("aria-valuenow")
    return int(value or 0)


def wait_for_progress(page: Page, job_id: str, percent: int) -> None:
    """Wait (polling every frame) until the running job's row shows at least `percent`."""
    page.wait_for_function(
        """([id, percent]) => {
          const row = document.querySelector(`.job-row[data-job-id="${id}"]`);
          const bar = row && row.querySelector('[role=progressbar]');
          return bar && row.dataset.status === 'running'
            && Number(bar.getAttribute('aria-valuenow')) >= percent;
        }""",
        arg=[job_id, percent],
        timeout=WAIT_MS,
    )


def logged_event_ids(page: Page) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "#job-detail .event-log li", "items => items.map(li => li.dataset.eventId)"
    )
    return ids


def history_ids(gateway: GatewayProcess, channel: str) -> list[str]:
    response = httpx.get(f"{gateway.url}/channels/{channel}/events?limit=1000", timeout=10)
    response.raise_for_status()
    return [event["id"] for event in response.json()["events"]]


def join_room(page: Page, room: str, nick: str) -> None:
    page.fill("#room-name", room)
    page.fill("#nickname", nick)
    page.click("#join-button")
    _expect()(page.locator("#room")).to_be_visible(timeout=WAIT_MS)


def say(page: Page, text: str) -> None:
    page.fill("#message-text", text)
    page.press("#message-text", "Enter")


def test_sleep_job_progresses_and_completes_with_its_result(
    context: Any, gateway: GatewayProcess
) -> None:
    expect = _expect()
    page = open_dashboard(context, gateway)
    expect(page.locator("#job-data")).to_have_value('{\n  "seconds": 3,\n  "steps": 6\n}')

    job_id = submit_job(page, "sleep", '{"seconds": 2.5, "steps": 5}')
    detail = page.locator("#job-detail")
    wait_for_progress(page, job_id, 40)
    expect(detail.locator(".event-log li").first).to_be_visible()

    expect(row(page, job_id)).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    expect(row(page, job_id).locator(".status")).to_have_text("completed")
    expect(row(page, job_id).locator("[role=progressbar]")).to_have_attribute(
        "aria-valuenow", "100"
    )
    expect(detail).to_have_attribute("data-status", "completed")
    expect(detail.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    expect(detail.locator(".elapsed")).to_contain_text("took")
    expect(page.locator("#job-cancel")).to_be_hidden()
    link = detail.locator("a.result-link")
    expect(link).to_have_attribute("href", f"/jobs/{job_id}/result")
    expect(detail.locator(".result")).to_contain_text('"slept": 2.5')
    result = page.request.get(gateway.url + (link.get_attribute("href") or ""))
    assert result.json()["result"] == {"slept": 2.5, "steps": 5}

    progress = page.evaluate(
        """id => window.dashboard.jobs.get(id).events
              .filter(e => e.type === 'job.progress').map(e => e.data.progress)""",
        job_id,
    )
    assert progress == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert logged_event_ids(page) == history_ids(gateway, f"job:{job_id}")

    # Close the detail view with Escape; the row's button opens it again (keyboard).
    detail.locator("#job-detail-close").focus()
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()
    opener = row(page, job_id).locator(".job-open")
    expect(opener).to_be_focused()
    expect(opener).to_have_attribute("aria-expanded", "false")
    page.keyboard.press("Enter")
    expect(detail).to_have_attribute("data-job-id", job_id)
    expect(opener).to_have_attribute("aria-expanded", "true")
    assert logged_event_ids(page) == history_ids(gateway, f"job:{job_id}")


def test_failed_job_shows_its_error(context: Any, gateway: GatewayProcess) -> None:
    expect = _expect()
    page = open_dashboard(context, gateway)
    job_id = submit_job(page, "fail", '{"message": "the disk is on fire"}')
    detail = page.locator("#job-detail")
    expect(row(page, job_id)).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
    expect(detail.locator(".job-error")).to_contain_text("the disk is on fire")
    expect(detail.locator("a.result-link")).to_have_count(0)


def test_jobs_submitted_elsewhere_appear_and_move_live_and_filter(
    context: Any, gateway: GatewayProcess
) -> None:
    expect = _expect()
    page = open_dashboard(context, gateway)
    done = submit_elsewhere(gateway, "sleep", {"seconds": 0.2, "steps": 1})
    failed = submit_elsewhere(gateway, "fail", {"message": "no"})
    # Long enough to be running through every check below; cancelled to end it.
    running = submit_elsewhere(gateway, "sleep", {"seconds": 60, "steps": 60})
    for job_id in (done, failed, running):
        expect(row(page, job_id)).to_be_visible(timeout=WAIT_MS)
    # Newest first.
    ids = page.eval_on_selector_all(".job-row", "rows => rows.map(r => r.dataset.jobId)")
    assert ids.index(running) < ids.index(failed) < ids.index(done), ids

    # The running one moves with its events: its bar and duration grow.
    wait_for_progress(page, running, 1)
    duration = row(page, running).locator(".duration")
    first = duration.text_content()
    expect(duration).not_to_have_text(first or "", timeout=WAIT_MS)
    expect(row(page, done)).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    expect(row(page, failed)).to_have_attribute("data-status", "failed", timeout=WAIT_MS)

    page.click("label[for=filter-active]")
    expect(row(page, running)).to_be_visible()
    expect(row(page, done)).to_be_hidden()
    expect(row(page, failed)).to_be_hidden()

    # Keyboard: arrows move between the filters (radio buttons), as in any radio group.
    page.focus("#filter-active")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#filter-failed")).to_be_checked()
    expect(row(page, failed)).to_be_visible()
    expect(row(page, running)).to_be_hidden()
    shown = page.eval_on_selector_all(
        ".job-row:not([hidden])", "rows => rows.map(r => r.dataset.status)"
    )
    assert shown and set(shown) == {"failed"}, shown

    # Filtered to "active", a job leaves the view by itself when it ends.
    page.click("label[for=filter-active]")
    expect(row(page, running)).to_be_visible()
    httpx.post(f"{gateway.url}/jobs/{running}/cancel", timeout=10).raise_for_status()
    expect(row(page, running)).to_be_hidden(timeout=WAIT_MS)
    expect(row(page, running)).to_have_attribute("data-status", "cancelled")
    page.click("label[for=filter-cancelled]")
    expect(row(page, running)).to_be_visible()
    page.click("label[for=filter-completed]")
    expect(row(page, running)).to_be_hidden()
    expect(row(page, done)).to_be_visible()
    counts = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-count]')]
              .map(n => [n.dataset.count, Number(n.textContent)]))"""
    )
    assert counts["all"] == page.locator(".job-row").count()
    assert counts["completed"] == page.locator('.job-row[data-status="completed"]').count()

    # A job that ended before the page opened shows its whole story when chosen.
    late = open_dashboard(context, gateway)
    expect(row(late, failed)).to_be_visible(timeout=WAIT_MS)
    row(late, failed).locator(".job-open").click()
    expect(late.locator("#job-detail .job-error")).to_contain_text("no", timeout=WAIT_MS)
    expect(late.locator("#job-detail .event-log li").last).to_contain_text("job.failed")


TICKS = [
    "deploying the resize workers",
    "queue is draining",
    "thumbnails look right",
    "p99 is flat",
    "shipping it",
]


def test_traffic_chart_follows_the_metrics(context: Any, gateway: GatewayProcess) -> None:
    expect = _expect()
    page = open_dashboard(context, gateway)
    room = "traffic-" + secrets.token_hex(3)
    # Bob first: ada's list (read when she joins) then holds both, with or without presence
    # events (the suite's gateways send none unless asked).
    join_room(open_dashboard(context, gateway), room, "bob")
    join_room(page, room, "ada")
    # Running through the whole test (the screenshot shows it), cancelled at the end.
    running = submit_job(page, "sleep", '{"seconds": 30, "steps": 30}')
    lines = iter(TICKS * 20)
    events = page.locator('.metric[data-metric="events"]')
    line = events.locator("path.line")

    def published_and_charted() -> bool:
        httpx.post(
            f"{gateway.url}/channels/room:{room}/events",
            json={"type": "message", "data": {"nick": "bob", "text": next(lines)}},
            timeout=5,
        ).raise_for_status()
        current = events.get_attribute("data-current")
        return (
            bool(current)
            and float(current or 0) > 0
            and int(events.locator("svg").get_attribute("data-points") or 0) >= 3
        )

    wait_until(published_and_charted, 15, "the events/s chart to show the published events")
    assert (line.get_attribute("d") or "").startswith("M")
    deliveries = page.locator('.metric[data-metric="deliveries"]')
    expect(deliveries).not_to_have_attribute("data-current", "", timeout=WAIT_MS)
    wait_until(
        lambda: float(deliveries.get_attribute("data-current") or 0) > 0,
        10,
        "deliveries/s above 0 (the page receives the room's events)",
    )
    connections = page.locator('.metric[data-metric="connections"]')
    assert float(connections.get_attribute("data-current") or 0) >= 1
    label = connections.locator("svg").get_attribute("aria-label") or ""
    assert label.startswith("Open connections over the last"), label

    # The chart moves on by itself: its path changes with the next scrape.
    before = line.get_attribute("d")
    expect(line).not_to_have_attribute("d", before or "", timeout=WAIT_MS)

    wait_for_progress(page, running, 10)
    target = ROOT / "test-artifacts" / "dashboard.png"
    target.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(target), full_page=True)
    if os.environ.get(UPDATE_SCREENSHOT):
        shutil.copyfile(target, DOCS_SCREENSHOT)
    page.click("#job-cancel")
    expect(row(page, running)).to_have_attribute("data-status", "cancelled", timeout=WAIT_MS)


def test_two_browsers_chat_in_a_room_and_late_joiners_get_history(
    browser: Any, gateway: GatewayProcess
) -> None:
    expect = _expect()
    room = "room-" + secrets.token_hex(3)
    first, second = browser.new_context(), browser.new_context()
    try:
        ada = open_dashboard(first, gateway)
        bob = open_dashboard(second, gateway)
        join_room(ada, room, "ada")
        join_room(bob, room, "bob")
        say(ada, "hello bob")
        expect(bob.locator(".message .text")).to_have_text(["hello bob"], timeout=WAIT_MS)
        expect(bob.locator(".message .nick")).to_have_text(["ada"])
        say(bob, "hi ada")
        expect(ada.locator(".message .text")).to_have_text(["hello bob", "hi ada"], timeout=WAIT_MS)
        expect(ada.locator(".message.mine .text")).to_have_text(["hello bob"])

        late = open_dashboard(second, gateway)
        join_room(late, room, "carol")
        expect(late.locator(".message .text")).to_have_text(
            ["hello bob", "hi ada"], timeout=WAIT_MS
        )
    finally:
        first.close()
        second.close()


def online_clients(page: Page) -> list[str]:
    clients: list[str] = page.eval_on_selector_all(
        "#online-list li", "items => items.map(li => li.dataset.client)"
    )
    return clients


def presence_clients(gateway: GatewayProcess, channel: str) -> list[str]:
    response = httpx.get(f"{gateway.url}/channels/{channel}/presence", timeout=10)
    response.raise_for_status()
    return sorted(entry["client"] for entry in response.json()["clients"])


def test_chat_shows_who_is_online_live(
    browser: Any, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    expect = _expect()
    # The test suite's gateways send no presence events unless asked (tests/support.py).
    gateway = gateway_factory(GATEWAY_PRESENCE_EVENTS="room")
    room = "online-" + secrets.token_hex(3)
    channel = f"room:{room}"
    first, second = browser.new_context(), browser.new_context()
    try:
        ada = open_dashboard(first, gateway)
        join_room(ada, room, "ada")
        expect(ada.locator("#online-list li")).to_have_count(1, timeout=WAIT_MS)
        expect(ada.locator(".online")).to_have_attribute("data-state", "live")
        (ada_id,) = online_clients(ada)
        bob = open_dashboard(second, gateway)
        join_room(bob, room, "bob")
        # Bob's list comes from the presence read; ada's from bob's presence.join event.
        expect(bob.locator("#online-list li")).to_have_count(2, timeout=WAIT_MS)
        expect(ada.locator("#online-list li")).to_have_count(2, timeout=WAIT_MS)
        expect(ada.locator("#online-count")).to_have_text("2")
        assert sorted(online_clients(ada)) == sorted(online_clients(bob))
        assert sorted(online_clients(ada)) == presence_clients(gateway, channel)
        expect(ada.locator("#online-list li").first).to_contain_text("guest ")
        bob_id = next(c for c in online_clients(bob) if c != ada_id)
        expect(ada.locator(".messages .notice").last).to_have_text(f"guest {bob_id[:6]} joined")

        bob.click("#leave-button")  # bob leaves the room: ada sees him go
        expect(ada.locator("#online-list li")).to_have_count(1, timeout=WAIT_MS)
        expect(ada.locator("#online-count")).to_have_text("1")
        expect(ada.locator(".messages .notice").last).to_have_text(f"guest {bob_id[:6]} left")
        assert online_clients(ada) == [ada_id]
        assert online_clients(ada) == presence_clients(gateway, channel)
    finally:
        first.close()
        second.close()


def test_chat_works_and_says_so_where_presence_is_off(
    context: Any, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    expect = _expect()
    gateway = gateway_factory(GATEWAY_PRESENCE="user")  # kept for user:, not room:
    page = open_dashboard(context, gateway)
    join_room(page, "quiet", "ada")
    note = page.locator("#online-note")
    expect(note).to_be_visible(timeout=WAIT_MS)
    expect(note).to_contain_text("presence is not kept")
    expect(page.locator("#online-list")).to_be_hidden()
    say(page, "still works")
    expect(page.locator(".message .text")).to_have_text(["still works"], timeout=WAIT_MS)


def test_gateway_restart_mid_job_reconnects_and_loses_nothing(
    context: Any,
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    expect = _expect()
    port = free_port()
    worker_factory(REDIS_URL=redis_url)
    gateway = gateway_factory(REDIS_URL=redis_url, port=port)
    page = open_dashboard(context, gateway)
    connection = page.locator("#connection")

    job_id = submit_job(page, "sleep", '{"seconds": 6, "steps": 12}')
    wait_for_progress(page, job_id, 15)

    gateway.stop()
    expect(connection).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
    expect(page.locator("#connection-state")).to_have_text("reconnecting")
    assert progress_of(page, job_id) < 100, "the job ended before the gateway went down"
    restarted = gateway_factory(REDIS_URL=redis_url, port=port)
    expect(connection).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    expect(page.locator("#connection-state")).to_have_text("live")

    expect(row(page, job_id)).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    states = page.evaluate("window.dashboard.states")
    assert states[-3:] == ["open", "reconnecting", "open"], states
    assert page.evaluate("window.gateway.transport") == "websocket"
    logged = logged_event_ids(page)
    assert len(logged) == len(set(logged)), "an event was shown twice"
    assert logged == history_ids(restarted, f"job:{job_id}")


def test_page_works_over_sse_when_websocket_is_blocked(
    context: Any, gateway: GatewayProcess
) -> None:
    expect = _expect()
    attempts: list[str] = []

    def refuse(ws: Any) -> None:
        attempts.append(ws.url)
        ws.close()

    context.route_web_socket("**/ws", refuse)
    # Playwright stands in for WebSockets opened by pages, not by a SharedWorker: without one,
    # gateway.js shares the connection from a tab (docs/gateway-js.md), where the refusal applies.
    context.add_init_script("delete window.SharedWorker")
    page = open_dashboard(context, gateway)
    expect(page.locator("#connection")).to_have_attribute("data-transport", "sse")
    expect(page.locator("#connection-transport")).to_have_text("SSE")
    assert attempts, "the page never tried WebSocket"

    job_id = submit_job(page, "sleep", '{"seconds": 1, "steps": 4}')
    expect(row(page, job_id)).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    expect(row(page, job_id).locator("[role=progressbar]")).to_have_attribute(
        "aria-valuenow", "100"
    )
    assert logged_event_ids(page) == history_ids(gateway, f"job:{job_id}")

    join_room(page, "sse-room", "ada")
    say(page, "sent over HTTP, received over SSE")
    expect(page.locator(".message .text")).to_have_text(
        ["sent over HTTP, received over SSE"], timeout=WAIT_MS
    )
    assert page.evaluate("window.gateway.transport") == "sse"


def test_secure_mode_lists_only_what_the_page_may_read(
    context: Any, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """With API keys and a secret, the page (no credentials) may not list jobs: it says so and
    shows none of the jobs a backend submits; the traffic charts (public /metrics) still work."""
    expect = _expect()
    key = secrets.token_hex(16)
    gateway = gateway_factory(GATEWAY_API_KEYS=key, GATEWAY_SECRET=secrets.token_hex(32))
    response = httpx.post(
        f"{gateway.url}/jobs",
        json={"type": "sleep", "data": {"seconds": 0.1, "steps": 1}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    page = open_dashboard(context, gateway)
    note = page.locator("#jobs-note")
    expect(note).to_be_visible(timeout=WAIT_MS)
    expect(note).to_contain_text("listing every job needs an API key")
    # The list is not polled again once refused, so the backend's job can never appear.
    assert page.locator(".job-row").count() == 0
    assert page.evaluate("window.dashboard.jobView.listing") == "refused"
    expect(page.locator('.metric[data-metric="connections"]')).not_to_have_attribute(
        "data-current", "", timeout=WAIT_MS
    )


def test_follows_at_most_50_jobs_at_once(
    context: Any, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """Past 50 running jobs the page follows no more channels (a connection may hold 100
    subscriptions): the list poll keeps the other rows current instead."""
    expect = _expect()
    # No worker: the jobs stay queued (running, for the page). No submission rate limit.
    gateway = gateway_factory(GATEWAY_EMBEDDED_WORKER="0", GATEWAY_SUBMIT_RATE="0")
    api = httpx.Client(base_url=gateway.url, timeout=10)  # one connection for the 60 submissions

    def submit_30() -> list[str]:
        job = {"type": "sleep", "data": {"seconds": 60, "steps": 1}}
        return [api.post("/jobs", json=job).json()["id"] for _ in range(30)]

    first = submit_30()
    page = open_dashboard(context, gateway)
    expect(page.locator(".job-row")).to_have_count(30, timeout=WAIT_MS)
    later = submit_30()
    # The newest 50 listed, and the 30 it had: 60 running jobs, 50 of them followed.
    expect(page.locator(".job-row")).to_have_count(60, timeout=WAIT_MS)
    followed = "[...window.dashboard.jobs.values()].filter(j => j.unsubscribe).length"
    page.wait_for_function(f"{followed} === 50", timeout=WAIT_MS)
    messages = page.evaluate("[...window.dashboard.jobs.values()].map(j => j.message)")
    assert not [m for m in messages if "cannot follow" in m], messages
    # A job that is not followed still moves, with the list poll: cancel one.
    unfollowed = page.evaluate(
        "[...window.dashboard.jobs.values()].filter(j => !j.unsubscribe).map(j => j.id)"
    )
    assert len(unfollowed) == 10 and set(unfollowed) <= set(first + later)
    api.post(f"/jobs/{unfollowed[0]}/cancel").raise_for_status()
    api.close()
    expect(row(page, unfollowed[0])).to_have_attribute("data-status", "cancelled", timeout=WAIT_MS)


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's WCAG 2 A/AA violations on the page as it is now (the npm package, injected)."""
    if not AXE.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{AXE} is missing (CI is set): npm ci --prefix tests/node")
        pytest.skip("axe-core is not installed: npm ci --prefix tests/node (Debian package: npm)")
    page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = page.evaluate(
        """() => axe.run(document, {runOnly: {type: 'tag',
              values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"""
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["html"][:120] for n in v["nodes"]]}
        for v in result["violations"]
    ]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_dashboard_passes_axe_in_light_and_dark(
    browser: Any, gateway: GatewayProcess, scheme: str
) -> None:
    expect = _expect()
    themed = browser.new_context(viewport={"width": 1180, "height": 820}, color_scheme=scheme)
    try:
        page = open_dashboard(themed, gateway)
        job_id = submit_job(page, "fail", '{"message": "checked by axe"}')
        expect(row(page, job_id)).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
        join_room(page, "axe-" + secrets.token_hex(3), "ada")
        say(page, "contrast check")
        expect(page.locator(".message .text")).to_have_text(["contrast check"], timeout=WAIT_MS)
        expect(page.locator('.metric[data-metric="connections"]')).not_to_have_attribute(
            "data-current", "", timeout=WAIT_MS
        )
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        dark = background == "rgb(14, 17, 26)"
        assert dark == (scheme == "dark"), background
        violations = axe_violations(page)
        assert not violations, violations
    finally:
        themed.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_dashboard_fits_a_phone(browser: Any, gateway: GatewayProcess, scheme: str) -> None:
    expect = _expect()
    phone = browser.new_context(
        viewport={"width": 375, "height": 740}, is_mobile=True, color_scheme=scheme
    )
    try:
        page = open_dashboard(phone, gateway)
        job_id = submit_job(page, "sleep", '{"seconds": 0.5, "steps": 2}')
        expect(row(page, job_id)).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
        join_room(page, "phone-" + secrets.token_hex(3), "ada")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page scrolls sideways at phone width ({width}px)"
        overflowing = page.evaluate(
            """() => [...document.querySelectorAll('th, td, .metric, .filters label')]
                  .filter(n => n.scrollWidth > n.clientWidth + 1)
                  .map(n => n.outerHTML.slice(0, 80))"""
        )
        assert not overflowing, overflowing
        for field in ("job-type", "job-data", "room-name", "nickname", "message-text"):
            assert page.locator(f"label[for={field}]").count() == 1, f"#{field} has no label"
    finally:
        phone.close()
