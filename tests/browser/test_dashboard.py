"""The dashboard and gateway.js in a real browser (Debian's Chromium) against real gateways."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tests.support import GatewayProcess, WorkerProcess, free_port

if TYPE_CHECKING:
    from playwright.sync_api import Page

WAIT_MS = 15_000


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


def submit_job(page: Page, type_: str, data: str) -> str:
    """Submit a job from the form; return its id (from the card the page adds)."""
    before = page.locator(".job").count()
    page.select_option("#job-type", type_)
    page.fill("#job-data", data)
    page.click("#job-submit")
    _expect()(page.locator(".job")).to_have_count(before + 1, timeout=WAIT_MS)
    job_id = page.locator(".job").first.get_attribute("data-job-id")
    assert job_id
    return job_id


def progress_of(page: Page, job_id: str) -> int:
    value = page.locator(f'.job[data-job-id="{job_id}"] [role=progressbar]').get_attribute(
        "aria-valuenow"
    )
    return int(value or 0)


def wait_for_progress(page: Page, job_id: str, percent: int) -> None:
    """Wait (polling every frame) until the running job's bar shows at least `percent`."""
    page.wait_for_function(
        """([id, percent]) => {
          const card = document.querySelector(`.job[data-job-id="${id}"]`);
          const bar = card && card.querySelector('[role=progressbar]');
          return bar && card.dataset.status === 'running'
            && Number(bar.getAttribute('aria-valuenow')) >= percent;
        }""",
        arg=[job_id, percent],
        timeout=WAIT_MS,
    )


def logged_event_ids(page: Page, job_id: str) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        f'.job[data-job-id="{job_id}"] .event-log li',
        "items => items.map(li => li.dataset.eventId)",
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
    context: Any, gateway: GatewayProcess, artifacts: Path
) -> None:
    expect = _expect()
    page = open_dashboard(context, gateway)
    expect(page.locator("#job-data")).to_have_value('{\n  "seconds": 3,\n  "steps": 6\n}')
    join_room(page, "lobby", "ada")
    say(page, "the sleep job is running, watch the bar")
    expect(page.locator(".message .text")).to_have_text(
        ["the sleep job is running, watch the bar"], timeout=WAIT_MS
    )

    job_id = submit_job(page, "sleep", '{"seconds": 2.5, "steps": 5}')
    card = page.locator(f'.job[data-job-id="{job_id}"]')
    bar = card.locator("[role=progressbar]")
    wait_for_progress(page, job_id, 40)
    card.locator("summary").click()
    expect(card.locator(".event-log li").first).to_be_visible()
    page.screenshot(path=str(artifacts / "dashboard.png"))

    expect(card).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(card.locator(".status")).to_have_text("completed")
    link = card.locator("a.result-link")
    expect(link).to_have_attribute("href", f"/jobs/{job_id}/result")
    expect(card.locator(".result")).to_contain_text('"slept": 2.5')
    result = page.request.get(gateway.url + (link.get_attribute("href") or ""))
    assert result.json()["result"] == {"slept": 2.5, "steps": 5}

    progress = page.evaluate(
        """id => window.dashboard.jobs.get(id).events
              .filter(e => e.type === 'job.progress').map(e => e.data.progress)""",
        job_id,
    )
    assert progress == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert logged_event_ids(page, job_id) == history_ids(gateway, f"job:{job_id}")


def test_failed_job_shows_its_error(context: Any, gateway: GatewayProcess) -> None:
    expect = _expect()
    page = open_dashboard(context, gateway)
    job_id = submit_job(page, "fail", '{"message": "the disk is on fire"}')
    card = page.locator(f'.job[data-job-id="{job_id}"]')
    expect(card).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
    expect(card.locator(".job-error")).to_contain_text("the disk is on fire")
    expect(card.locator("a.result-link")).to_have_count(0)


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
    card = page.locator(f'.job[data-job-id="{job_id}"]')
    wait_for_progress(page, job_id, 15)

    gateway.stop()
    expect(connection).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
    expect(page.locator("#connection-state")).to_have_text("reconnecting")
    assert progress_of(page, job_id) < 100, "the job ended before the gateway went down"
    restarted = gateway_factory(REDIS_URL=redis_url, port=port)
    expect(connection).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    expect(page.locator("#connection-state")).to_have_text("live")

    expect(card).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    states = page.evaluate("window.dashboard.states")
    assert states[-3:] == ["open", "reconnecting", "open"], states
    assert page.evaluate("window.gateway.transport") == "websocket"
    logged = logged_event_ids(page, job_id)
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
    card = page.locator(f'.job[data-job-id="{job_id}"]')
    expect(card).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    expect(card.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    assert logged_event_ids(page, job_id) == history_ids(gateway, f"job:{job_id}")

    join_room(page, "sse-room", "ada")
    say(page, "sent over HTTP, received over SSE")
    expect(page.locator(".message .text")).to_have_text(
        ["sent over HTTP, received over SSE"], timeout=WAIT_MS
    )
    assert page.evaluate("window.gateway.transport") == "sse"


def test_dashboard_fits_a_phone(browser: Any, gateway: GatewayProcess) -> None:
    phone = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        page = open_dashboard(phone, gateway)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page scrolls sideways at phone width ({width}px)"
        for field in ("#job-type", "#job-data", "#room-name", "#nickname"):
            label = page.locator(f"label[for={field[1:]}]")
            assert label.count() == 1, f"{field} has no label"
    finally:
        phone.close()
