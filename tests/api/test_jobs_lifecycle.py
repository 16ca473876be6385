"""Job API lifecycle against real gateway processes: idempotency, ETag, listing, cancellation,
timeouts and long polling with hundreds of waiters."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import redis

from tests.support import GatewayProcess, async_wait_until, collect_sse

OPEN = {
    "GATEWAY_SUBMIT_RATE": "0",
    "GATEWAY_MAX_CONNECTIONS_PER_CLIENT": "0",
    "GATEWAY_CONNECT_RATE": "0",  # hundreds of long polls opened at once from one address
}
SLOW = {"type": "sleep", "data": {"seconds": 60, "steps": 1}}


def status_of(url: str, job_id: str) -> str:
    status: str = httpx.get(f"{url}/jobs/{job_id}").json()["status"]
    return status


# --- idempotency --------------------------------------------------------------------------------


def test_idempotency_key_replays_and_refuses_other_bodies(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    first_gw = gateway_factory(REDIS_URL=redis_url, **OPEN)
    second_gw = gateway_factory(REDIS_URL=redis_url, **OPEN)
    headers = {"Idempotency-Key": "order-42"}
    body = {"type": "sleep", "data": {"seconds": 1, "steps": 1}}
    first = httpx.post(first_gw.url + "/jobs", json=body, headers=headers)
    assert first.status_code == 202
    again = httpx.post(second_gw.url + "/jobs", json=body, headers=headers)  # other process
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    other = httpx.post(first_gw.url + "/jobs", json={**body, "data": {}}, headers=headers)
    assert other.status_code == 422 and other.headers["content-type"].startswith(
        "application/problem+json"
    )
    invalid = httpx.post(
        first_gw.url + "/jobs", json={"type": "nope"}, headers={"Idempotency-Key": "k2"}
    )
    assert invalid.status_code == 422
    fixed = httpx.post(first_gw.url + "/jobs", json=body, headers={"Idempotency-Key": "k2"})
    assert fixed.status_code == 202  # a refused request does not burn the key
    jobs = httpx.get(first_gw.url + "/jobs").json()["jobs"]
    assert len(jobs) == 2


def test_idempotency_keys_are_per_api_key(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """Two callers with different API keys and the same key and body make two jobs, over
    `POST /jobs` and `POST /jobs/batch` alike; neither is answered with the other's job (whose
    token grants its events); each still gets its own replay."""
    alpha, beta = "a" * 32, "b" * 32
    gateway = gateway_factory(REDIS_URL=redis_url, GATEWAY_API_KEYS=f"{alpha} {beta}", **OPEN)
    body = {"type": "sleep", "data": {"seconds": 1, "steps": 1}}

    def submit(api_key: str) -> dict[str, Any]:
        response = httpx.post(
            gateway.url + "/jobs",
            json=body,
            headers={"Authorization": f"Bearer {api_key}", "Idempotency-Key": "order-7"},
        )
        assert response.status_code == 202, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def submit_batch(api_key: str) -> dict[str, Any]:
        response = httpx.post(
            gateway.url + "/jobs/batch",
            json={"jobs": [{**body, "idempotency_key": "order-8"}]},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        assert response.status_code == 202, response.text
        answer: dict[str, Any] = response.json()["jobs"][0]
        return answer

    for send in (submit, submit_batch):
        first_alpha, first_beta = send(alpha), send(beta)
        assert first_alpha["id"] != first_beta["id"]
        assert first_alpha["token"] != first_beta["token"]
        assert send(alpha) == first_alpha
        assert send(beta) == first_beta
    client = redis.Redis.from_url(redis_url)
    stored = [name.decode() for name in client.scan_iter("gw:idem:*")]
    client.close()
    assert len(stored) == 4
    assert not any(alpha in name or beta in name for name in stored)  # never the raw key


def test_without_api_keys_idempotency_keys_are_per_token_subject(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """No API keys (anyone may submit, reads need tokens): a caller who sends a channel token
    has its own key space (its subject's), apart from other subjects and from anonymous
    callers, who share one; a token that does not verify is refused, not ignored."""
    secret = "s" * 32
    gateway = gateway_factory(REDIS_URL=redis_url, GATEWAY_SECRET=secret, **OPEN)
    body = {"type": "sleep", "data": {"seconds": 1, "steps": 1}}

    def token(sub: str, jti: str = "first") -> str:
        claims = {"sub": sub, "jti": jti, "exp": int(time.time()) + 600, "channels": {}}
        return jwt.encode(claims, secret, algorithm="HS256")

    def submit(headers: dict[str, str]) -> httpx.Response:
        return httpx.post(
            gateway.url + "/jobs", json=body, headers={"Idempotency-Key": "order-9", **headers}
        )

    ann, bob = (
        {"Authorization": f"Bearer {token('ann')}"},
        {"Authorization": f"Bearer {token('bob')}"},
    )
    answers = [submit(headers).json() for headers in (ann, bob, {})]
    assert len({answer["id"] for answer in answers}) == 3
    again = submit({"Authorization": f"Bearer {token('ann', 'second')}"})  # another token
    assert again.json() == answers[0]
    assert submit(bob).json() == answers[1]
    assert submit({}).json() == answers[2]
    batch = [
        httpx.post(
            gateway.url + "/jobs/batch",
            json={"jobs": [{**body, "idempotency_key": "order-9"}]},
            headers=headers,
        ).json()["jobs"][0]
        for headers in (ann, bob, ann)
    ]
    # The batch item's key is the header's, in the same caller's key space.
    assert [answer["id"] for answer in batch] == [answers[n]["id"] for n in (0, 1, 0)]
    forged = jwt.encode({"sub": "ann", "exp": int(time.time()) + 600}, "x" * 32, algorithm="HS256")
    refused = submit({"Authorization": f"Bearer {forged}"})
    assert refused.status_code == 401, refused.text
    assert refused.headers["content-type"] == "application/problem+json"


def test_idempotency_key_in_flight_is_409(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gateway = gateway_factory(REDIS_URL=redis_url, **OPEN)
    raw = orjson.dumps({"taskName": "sleep", "parameters": {}})
    fingerprint = hashlib.sha256(b"POST /submitTask\n" + raw).hexdigest()
    client = redis.Redis.from_url(redis_url)
    claim = orjson.dumps({"fingerprint": fingerprint, "state": "processing"})
    client.set("gw:idem:busy", claim, ex=60)  # another gateway is processing this request
    client.close()
    response = httpx.post(
        gateway.url + "/submitTask",
        content=raw,
        headers={"Idempotency-Key": "busy", "content-type": "application/json"},
    )
    assert response.status_code == 409 and response.headers["retry-after"] == "1"


async def test_parallel_identical_submissions_make_one_job(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gateways = [gateway_factory(REDIS_URL=redis_url, **OPEN) for _ in range(2)]
    body = {"jobType": "sleep", "jobData": {"seconds": 1, "steps": 1}}
    async with httpx.AsyncClient(timeout=20) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    gateways[i % 2].url + "/submit-job",
                    json=body,
                    headers={"Idempotency-Key": "same-for-all"},
                )
                for i in range(60)
            )
        )
        ok = [r for r in responses if r.status_code == 202]
        assert {r.status_code for r in responses} <= {202, 409}
        assert len({r.json()["jobId"] for r in ok}) == 1
        retry = await client.post(
            gateways[0].url + "/submit-job", json=body, headers={"Idempotency-Key": "same-for-all"}
        )
        assert retry.status_code == 202 and retry.json()["jobId"] == ok[0].json()["jobId"]
        listed = (await client.get(gateways[0].url + "/jobs")).json()["jobs"]
    assert len(listed) == 1


# --- polling ------------------------------------------------------------------------------------


def test_etag_and_if_none_match(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gateway = gateway_factory(**OPEN)
    job_id = httpx.post(gateway.url + "/jobs", json=SLOW).json()["id"]
    first = httpx.get(f"{gateway.url}/jobs/{job_id}")
    etag = first.headers["etag"]
    assert first.headers["retry-after"] == "1"
    unchanged = httpx.get(f"{gateway.url}/jobs/{job_id}", headers={"If-None-Match": etag})
    if unchanged.status_code == 200:  # the job moved (started) in between: a new version
        etag = unchanged.headers["etag"]
        unchanged = httpx.get(f"{gateway.url}/jobs/{job_id}", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    httpx.post(f"{gateway.url}/jobs/{job_id}/cancel")
    changed = httpx.get(f"{gateway.url}/jobs/{job_id}", headers={"If-None-Match": f"W/{etag}"})
    assert changed.status_code == 200 and changed.json()["status"] == "cancelled"
    assert changed.headers["etag"] != etag and "retry-after" not in changed.headers


async def test_hundreds_of_long_pollers_are_released_together(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(**OPEN)
    job_id = httpx.post(gateway.url + "/jobs", json=SLOW).json()["id"]
    await async_wait_until(lambda: status_of(gateway.url, job_id) == "running", 10, "start")
    since = httpx.get(f"{gateway.url}/jobs/{job_id}").json()["last_event_id"]
    limits = httpx.Limits(max_connections=400)
    async with httpx.AsyncClient(timeout=40, limits=limits) as client:
        polls = [
            asyncio.create_task(client.get(f"{gateway.url}/jobs/{job_id}?wait=30&since={since}"))
            for _ in range(300)
        ]
        done, _pending = await asyncio.wait(polls, timeout=1.0)
        assert not done, "long polls must be held while nothing happens"
        cancel = await client.post(f"{gateway.url}/jobs/{job_id}/cancel")
        assert cancel.status_code == 200
        responses = await asyncio.wait_for(asyncio.gather(*polls), 15)
    assert all(r.status_code == 200 for r in responses)
    assert {r.json()["status"] for r in responses} == {"cancelled"}


# --- listing ------------------------------------------------------------------------------------


async def test_list_jobs_newest_first_paginated_and_filtered(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(**OPEN)
    ids = []
    for i in range(5):
        body = SLOW if i % 2 == 0 else {"type": "fail", "data": {"message": "x"}}
        ids.append(httpx.post(gateway.url + "/jobs", json=body).json()["id"])
    seen: list[str] = []
    url: str | None = "/jobs?limit=2"
    pages = 0
    while url is not None:
        page = httpx.get(gateway.url + url).json()
        seen += [job["id"] for job in page["jobs"]]
        url = page.get("links", {}).get("next")
        pages += 1
    assert seen == list(reversed(ids)) and pages == 3
    sleeps = httpx.get(gateway.url + "/jobs?type=sleep").json()["jobs"]
    assert [job["id"] for job in sleeps] == [ids[4], ids[2], ids[0]]
    await async_wait_until(
        lambda: status_of(gateway.url, ids[1]) == "failed", 20, "fail job to fail"
    )
    await async_wait_until(lambda: status_of(gateway.url, ids[3]) == "failed", 20, "fail job")
    failed = httpx.get(gateway.url + "/jobs?status=failed,cancelled").json()["jobs"]
    assert [job["id"] for job in failed] == [ids[3], ids[1]]
    assert httpx.get(gateway.url + "/jobs?cursor=%%%").status_code == 400
    assert httpx.get(gateway.url + "/jobs?status=bogus").status_code == 400


# --- cancellation and timeouts ------------------------------------------------------------------


async def test_cancel_running_job_tells_the_handler_and_ends_as_cancelled(
    redis_url: str,
    tmp_path: Path,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., Any],
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "GATEWAY_CANCEL_GRACE": "0.5",
        "GATEWAY_HANDLERS": "tests.jobs.handlers_for_cancel",
        **OPEN,
    }
    gateway = gateway_factory(**env)
    worker_factory(**env)
    jobs = {}
    for kind in ("cooperative", "stubborn"):
        response = httpx.post(
            gateway.url + "/jobs", json={"type": kind, "data": {"dir": str(tmp_path)}}
        )
        assert response.status_code == 202, response.text
        jobs[kind] = response.json()["id"]
    for job_id in jobs.values():
        await async_wait_until(lambda j=job_id: status_of(gateway.url, j) == "running", 15)
        cancelled = httpx.post(f"{gateway.url}/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    await async_wait_until(
        lambda: (tmp_path / f"{jobs['cooperative']}.saw-cancel").exists(), 10, "handler stop"
    )
    stubborn_marker = tmp_path / f"{jobs['stubborn']}.killed"
    await async_wait_until(stubborn_marker.exists, 10, "stubborn handler cancelled")
    assert stubborn_marker.read_text() == "True"  # it was told first, then cancelled
    for job_id in jobs.values():
        events = await collect_sse(f"{gateway.url}/jobs/{job_id}/events", timeout=10)
        assert [e.event for e in events][-1] == "job.cancelled"
        assert status_of(gateway.url, job_id) == "cancelled"
    again = httpx.post(f"{gateway.url}/jobs/{jobs['stubborn']}/cancel")
    assert again.status_code == 409


def test_per_type_timeout_fails_the_job(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gateway = gateway_factory(GATEWAY_JOB_TIMEOUTS="sleep=0.3", GATEWAY_MAX_ATTEMPTS="1", **OPEN)
    job_id = httpx.post(gateway.url + "/jobs", json=SLOW).json()["id"]
    deadline_body: dict[str, Any] = {}

    def failed() -> bool:
        deadline_body.update(httpx.get(f"{gateway.url}/jobs/{job_id}").json())
        return deadline_body["status"] == "failed"

    asyncio.run(async_wait_until(failed, 10, "timeout"))
    assert deadline_body["error"]["type"] == "timeout"
    assert "0.3" in deadline_body["error"]["message"]
    quick = httpx.post(
        gateway.url + "/jobs", json={"type": "data_analysis", "data": {"csv": "x\n1\n"}}
    ).json()["id"]
    asyncio.run(async_wait_until(lambda: status_of(gateway.url, quick) == "completed", 10))
