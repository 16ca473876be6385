"""The request/response half of the client: submit and read jobs, publish, over HTTP.

Publishing goes over HTTP rather than the subscriptions' WebSocket on purpose: each call gets
its own answer (the event's id, or a problem that says why not) whatever state the WebSocket is
in, so a publish is never queued behind a reconnect, nor lost with a connection that dropped
between the frame and its `ack`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from gateway.client.jobs import Job
from gateway.client.refusals import refusal_of_response
from gateway.errors import GatewayUnavailable

REQUEST_TIMEOUT = 30.0


class HttpApi:
    """The gateway's HTTP API for one base URL and one set of credentials."""

    def __init__(
        self, url: str, *, api_key: str | None, token: str | None, timeout: float = REQUEST_TIMEOUT
    ) -> None:
        self.url = url.rstrip("/")
        credential = api_key or token
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(
        self,
        type_: str,
        data: Any,
        *,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        body: dict[str, Any] = {"type": type_, "data": data}
        if callback_url is not None:
            body["callback_url"] = callback_url
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        answer = await self._request("POST", "/jobs", json=body, headers=headers, expect=202)
        return Job.from_resource(answer)

    async def job(self, job_id: str) -> Job:
        return Job.from_resource(await self._request("GET", f"/jobs/{_segment(job_id)}"))

    async def publish(self, channel: str, type_: str, data: Any, token: str | None) -> str:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        path = f"/channels/{quote(channel, safe=':')}/events"
        answer = await self._request(
            "POST", path, json={"type": type_, "data": data}, headers=headers, expect=202
        )
        return str(answer["id"])

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        expect: int = 200,
    ) -> dict[str, Any]:
        action = f"{method} {path}"
        try:
            response = await self._http.request(method, path, json=json, headers=headers)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"cannot reach {self.url}: {exc!r}") from exc
        if response.status_code != expect:
            raise refusal_of_response(response, action)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise GatewayUnavailable(f"{action}: the answer is not a JSON object", status=200)
        return body


def _segment(value: str) -> str:
    return quote(value, safe="")
