"""Job HTTP API basics and the seed-compatible aliases, against a real gateway process."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.support import GatewayProcess


def wait_status(url: str, job_id: str, status: str, timeout: float = 10) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, object] = httpx.get(f"{url}/jobs/{job_id}").json()
        if body["status"] == status:
            return body
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} never became {status}")


def test_submit_returns_202_location_and_links(embedded_gateway: GatewayProcess) -> None:
    response = httpx.post(
        embedded_gateway.url + "/jobs", json={"type": "sleep", "data": {"seconds": 0.1, "steps": 2}}
    )
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/jobs/{body['id']}"
    assert body["status"] == "queued" and body["type"] == "sleep"
    assert body["links"]["events"] == f"/jobs/{body['id']}/events"
    assert body["links"]["ws"] == f"/ws?channel=job:{body['id']}"


def test_status_progress_result(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    job = httpx.post(
        url + "/jobs", json={"type": "sleep", "data": {"seconds": 0.2, "steps": 2}}
    ).json()
    early = httpx.get(f"{url}/jobs/{job['id']}/result")
    assert early.status_code in (409, 200)
    done = wait_status(url, job["id"], "completed")
    assert done["progress"] == 1.0 and done["attempts"] == 1
    assert done["result_url"] == f"/jobs/{job['id']}/result"
    result = httpx.get(f"{url}/jobs/{job['id']}/result")
    assert result.json() == {"job_id": job["id"], "result": {"slept": 0.2, "steps": 2}}


def test_failing_job_retries_then_fails_with_the_error(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    job = httpx.post(url + "/jobs", json={"type": "fail", "data": {"message": "boom"}}).json()
    failed = wait_status(url, job["id"], "failed", timeout=20)
    assert failed["error"] == {"type": "handler_error", "message": "boom"}
    assert failed["attempts"] == 3
    history = httpx.get(f"{url}/channels/job:{job['id']}/events").json()["events"]
    types = [e["type"] for e in history]
    assert types.count("job.retrying") == 2 and types[-1] == "job.failed"
    retrying = next(e for e in history if e["type"] == "job.retrying")
    assert retrying["data"]["error"]["message"] == "boom" and "next_attempt_at" in retrying["data"]
    assert httpx.get(f"{url}/jobs/{job['id']}/result").status_code == 409


def test_data_analysis_summarises_a_csv(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    csv_text = "x,y,name\n1,10,a\n2,20,b\n3,,c\n4,40,d\n"
    job = httpx.post(
        url + "/jobs", json={"type": "data_analysis", "data": {"csv": csv_text, "chunk_rows": 2}}
    ).json()
    wait_status(url, job["id"], "completed")
    result = httpx.get(f"{url}/jobs/{job['id']}/result").json()["result"]
    assert result["rows"] == 4
    assert result["columns"]["x"]["mean"] == 2.5 and result["columns"]["x"]["max"] == 4
    assert result["columns"]["y"]["missing"] == 1 and result["columns"]["y"]["count"] == 3
    assert result["columns"]["name"]["non_numeric"] == 4
    history = httpx.get(f"{url}/channels/job:{job['id']}/events").json()["events"]
    assert sum(e["type"] == "job.progress" for e in history) == 2


def test_client_mistakes_are_problems_not_500s(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    cases = [
        (
            httpx.post(
                url + "/jobs", content=b"{not json", headers={"content-type": "application/json"}
            ),
            400,
        ),
        (httpx.post(url + "/jobs", json=[1, 2]), 400),
        (httpx.post(url + "/jobs", json={"type": "teleport"}), 422),
        (httpx.post(url + "/jobs", json={"type": "sleep", "data": {"seconds": "x"}}), 422),
        (httpx.post(url + "/jobs", json={"type": "sleep", "data": {"seconds": 10**400}}), 400),
        (httpx.get(url + "/jobs/unknown"), 404),
        (httpx.get(url + "/jobs/unknown/result"), 404),
        (httpx.get(url + "/jobs/unknown?wait=abc"), 400),
        (httpx.get(url + "/channels/room:x/events?since=bad"), 400),
        (httpx.get(url + "/channels/room:x/events?limit=0"), 400),
        (httpx.post(url + "/channels/room:x/events", json={"type": "bad type!"}), 422),
        (httpx.get(url + "/nowhere"), 404),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["status"] == status and body["title"] and body["detail"]
    unknown_type = httpx.post(url + "/jobs", json={"type": "teleport"}).json()
    assert "sleep" in unknown_type["job_types"]


def test_history_api(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    ids = [
        httpx.post(f"{url}/channels/room:hist-api/events", json={"data": n}).json()["id"]
        for n in range(5)
    ]
    page = httpx.get(f"{url}/channels/room:hist-api/events?limit=2").json()
    assert [e["data"] for e in page["events"]] == [0, 1] and page["more"] and page["complete"]
    rest = httpx.get(f"{url}/channels/room:hist-api/events?since={page['last_id']}").json()
    assert [e["id"] for e in rest["events"]] == ids[2:] and not rest["more"]


def test_seed_aliases(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    submitted = httpx.post(
        url + "/submit-job", json={"jobType": "sleep", "jobData": {"seconds": 0, "steps": 1}}
    )
    assert submitted.status_code == 202 and submitted.json()["status"] == "queued"
    task = httpx.post(
        url + "/submitTask",
        json={"taskName": "sleep", "parameters": {"seconds": 0, "steps": 1}, "callbackUrl": None},
    )
    assert task.status_code == 202
    body = task.json()
    assert set(body) == {"taskId", "status", "callbackUrl"}
    wait_status(url, body["taskId"], "completed")
    status = httpx.get(f"{url}/taskStatus/{body['taskId']}").json()
    assert status == {
        "taskId": body["taskId"],
        "status": "completed",
        "resultUrl": f"/results/{body['taskId']}",
    }
    assert httpx.get(url + status["resultUrl"]).json()["result"] == {"slept": 0.0, "steps": 1}
    assert httpx.post(url + "/submit-job", json={"jobType": "nope"}).status_code == 422
    assert httpx.get(url + "/taskStatus/none").status_code == 404


def test_health_and_readiness(embedded_gateway: GatewayProcess) -> None:
    assert httpx.get(embedded_gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(embedded_gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["backend"] == "memory"


def test_dashboard_is_served(embedded_gateway: GatewayProcess) -> None:
    page = httpx.get(embedded_gateway.url + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_concurrent_posts_share_redis_round_trips(
    gateway_factory: Callable[..., GatewayProcess], redis_url: str
) -> None:
    """Many keep-alive clients at once: their submissions and publishes reach Redis as
    auto-pipelined batches on one connection (not one pooled connection per request in
    flight), and each request gets its own answer."""
    import asyncio

    import redis

    gateway = gateway_factory(REDIS_URL=redis_url, GATEWAY_SUBMIT_RATE="0")
    count = 100

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=20) as client:
            return await asyncio.gather(
                *(
                    client.post("/jobs", json={"type": "sleep", "data": {"n": n}})
                    for n in range(count)
                ),
                *(
                    client.post(f"/channels/room:{n % 4}/events", json={"data": n})
                    for n in range(count)
                ),
            )

    answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [202] * (2 * count)
    assert len({r.json()["id"] for r in answers[:count]}) == count
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.zcard("gw:{jobs}:index") == count
        assert sum(client.xlen(f"gw:{{room:{n}}}:log") for n in range(4)) == count
        # 2 x 100 requests in flight together; without auto-pipelining the pool opens a
        # connection for each one waiting on Redis.
        assert int(client.info("clients")["connected_clients"]) < 10
    finally:
        client.close()
