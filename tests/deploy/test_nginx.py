"""deploy/nginx/gateway.conf, run by Debian's nginx in front of two gateways on one Redis.

SSE, WebSocket and long polling go through nginx; a rolling restart of both gateways behind
it loses no event (clients resume through nginx on whichever process answers); requests are
spread over both processes; the gateways see the client's address, not nginx's nor one the
client made up.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.deploy.proxies import start_nginx
from tests.deploy.scenarios import (
    job_over_sse_websocket_and_long_poll,
    rolling_restart_loses_no_event,
)
from tests.deploy.stack import Stack, logged
from tests.support import wait_until


@pytest.fixture(scope="module")
def nginx(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of nginx running the documented configuration."""
    process, port = start_nginx(tmp_path_factory.mktemp("nginx"), stack.ports)
    yield f"http://127.0.0.1:{port}"
    process.stop()


async def test_a_job_over_sse_websocket_and_long_polling(nginx: str) -> None:
    await job_over_sse_websocket_and_long_poll(nginx)


def test_requests_are_balanced_over_both_gateways(stack: Stack, nginx: str) -> None:
    marker = "balance-" + uuid.uuid4().hex
    with httpx.Client(base_url=nginx) as http:
        for index in range(4):
            assert http.get(f"/jobs/{marker}-{index}").status_code == 404
    wait_until(lambda: len(logged(stack, marker)) == 4, 10, "the requests in the logs")
    assert sorted({index for index, _ in logged(stack, marker)}) == [0, 1]


def test_the_gateway_sees_the_client_address_not_a_claimed_one(stack: Stack, nginx: str) -> None:
    """nginx forwards the address the client connects from (here 127.0.0.7) and drops the
    X-Forwarded-For the client sent; the gateway believes nginx because it is a trusted proxy."""
    marker = "address-" + uuid.uuid4().hex
    transport = httpx.HTTPTransport(local_address="127.0.0.7")
    with httpx.Client(base_url=nginx, transport=transport) as http:
        response = http.get(f"/jobs/{marker}", headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 404
    wait_until(lambda: bool(logged(stack, marker)), 10, "the request in a gateway's log")
    lines = [line for _, line in logged(stack, marker)]
    assert len(lines) == 1 and "127.0.0.7:" in lines[0] and "203.0.113.9" not in lines[0], lines


async def test_a_rolling_restart_behind_nginx_loses_no_event(stack: Stack, nginx: str) -> None:
    await rolling_restart_loses_no_event(stack, nginx)
