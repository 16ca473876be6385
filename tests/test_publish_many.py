"""`gateway.submit`, `gateway.submit_many` and `gateway.publish_many`: straight to a real Redis
(seen by a real gateway and worker), and over HTTP to a gateway on the memory backend."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import redis

import gateway
from gateway.backends.redis_keys import queue_keys, queue_partition
from gateway.errors import EventTooLargeError, InvalidChannel, SubmitError
from tests.support import GatewayProcess, RedisServer, WorkerProcess, wait_until

SLEEP = {"type": "sleep", "data": {"seconds": 0, "steps": 1}}


def job_status(url: str, job_id: str) -> str:
    return str(httpx.get(f"{url}/jobs/{job_id}").json()["status"])


def test_submit_to_redis_is_run_by_a_worker(
    redis_url: str,
    gateway_factory: Callable[..., GatewayProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    served = gateway_factory(REDIS_URL=redis_url)
    job = gateway.submit("sleep", {"seconds": 0, "steps": 1}, redis_url=redis_url)
    assert job["status"] == "queued" and job["channel"] == f"job:{job['id']}"
    assert "token" not in job, "no GATEWAY_SECRET here: no token the gateways would accept"
    seen = httpx.get(f"{served.url}/jobs/{job['id']}").json()
    assert seen["last_event_id"] == job["last_event_id"]
    worker_factory(REDIS_URL=redis_url)
    wait_until(lambda: job_status(served.url, job["id"]) == "completed", 20, "job completed")
    events = httpx.get(f"{served.url}/channels/job:{job['id']}/events").json()["events"]
    assert [e["type"] for e in events][:2] == ["job.queued", "job.started"]


def test_submit_many_to_redis_answers_each_job(redis_url: str) -> None:
    answers = gateway.submit_many(
        [SLEEP, {"type": "nope"}, {"type": "sleep", "data": {"seconds": "x"}}, SLEEP],
        redis_url=redis_url,
    )
    assert [a.get("status") for a in answers] == ["queued", 422, 422, "queued"]
    assert answers[1]["type"] == "/problems/unprocessable"
    client = redis.Redis.from_url(redis_url)
    stream = queue_keys(queue_partition(answers[0]["id"], 1))[0]
    queued = [fields[b"job"].decode() for _id, fields in client.xrange(stream)]
    assert queued == [answers[0]["id"], answers[3]["id"]]
    for answer in (answers[0], answers[3]):
        history = client.xrange(f"gw:{{job:{answer['id']}}}:log")
        assert [entry_id.decode() for entry_id, _fields in history] == [answer["last_event_id"]]


def test_submit_enqueues_on_the_jobs_partition(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_QUEUE_PARTITIONS", "4")
    jobs = gateway.submit_many([SLEEP] * 8, redis_url=redis_url)
    client = redis.Redis.from_url(redis_url)
    for job in jobs:
        stream = queue_keys(queue_partition(job["id"], 4))[0]
        assert job["id"].encode() in {f[b"job"] for _i, f in client.xrange(stream)}


def test_submit_idempotency_keys_name_one_job(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    first = gateway.submit("sleep", {}, idempotency_key="once", redis_url=redis_url)
    again = gateway.submit("sleep", {}, idempotency_key="once", redis_url=redis_url)
    assert again["id"] == first["id"]
    with pytest.raises(SubmitError) as refused:
        gateway.submit("sleep", {"seconds": 1}, idempotency_key="once", redis_url=redis_url)
    assert refused.value.problem["type"] == "/problems/idempotency-key-reused"
    # The gateway's Idempotency-Key shares the keys: its retry of the job gets the same one.
    served = gateway_factory(REDIS_URL=redis_url)
    response = httpx.post(
        served.url + "/jobs",
        json={"type": "sleep", "data": {}},
        headers={"Idempotency-Key": "once"},
    )
    assert response.status_code == 202 and response.json()["id"] == first["id"]


def test_submit_refusals_raise_with_the_problem(redis_url: str) -> None:
    with pytest.raises(SubmitError) as refused:
        gateway.submit("no-such-type", {}, redis_url=redis_url)
    assert refused.value.problem["status"] == 422
    assert "sleep" in refused.value.problem["job_types"]


def test_submit_with_a_secret_hands_out_the_jobs_token(
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    secret = "publish-many-secret-0123456789-abcdef"
    api_key = "publish-many-key-0123456789"
    monkeypatch.setenv("GATEWAY_SECRET", secret)
    job = gateway.submit("sleep", {}, redis_url=redis_url)
    served = gateway_factory(REDIS_URL=redis_url, GATEWAY_SECRET=secret, GATEWAY_API_KEYS=api_key)
    read = httpx.get(f"{served.url}/jobs/{job['id']}", params={"token": job["token"]})
    assert read.status_code == 200 and read.json()["id"] == job["id"]


def test_publish_many_to_redis(
    redis_url: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    ids = gateway.publish_many(
        [
            ("room:a", "message", {"n": 1}),
            {"channel": "room:b", "data": {"n": 2}},
            ("room:a", "message", {"n": 3}),
        ],
        redis_url=redis_url,
    )
    served = gateway_factory(REDIS_URL=redis_url)
    room_a = httpx.get(served.url + "/channels/room:a/events").json()["events"]
    room_b = httpx.get(served.url + "/channels/room:b/events").json()["events"]
    assert [e["id"] for e in room_a] == [ids[0], ids[2]]
    assert [e["id"] for e in room_b] == [ids[1]] and room_b[0]["type"] == "message"


def test_publish_many_checks_everything_before_publishing(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_MAX_EVENT_SIZE", "room=300")
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(EventTooLargeError):
        gateway.publish_many(
            [("room:c", "message", 1), ("room:c", "message", "x" * 500)], redis_url=redis_url
        )
    with pytest.raises(InvalidChannel):
        gateway.publish_many(
            [("room:c", "message", 1), ("bad channel", "m", 1)], redis_url=redis_url
        )
    assert client.exists("gw:{room:c}:log") == 0
    # The settings are read again once the environment changed.
    monkeypatch.setenv("GATEWAY_MAX_EVENT_SIZE", "room=2000")
    assert len(gateway.publish_many([("room:c", "message", "x" * 500)], redis_url=redis_url)) == 1


def test_without_redis_they_post_to_the_gateway(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    job = gateway.submit("sleep", {"seconds": 0, "steps": 1}, redis_url="", url=url)
    assert job["status"] == "queued" and "token" in job
    answers = gateway.submit_many([SLEEP, {"type": "nope"}], redis_url="", url=url)
    assert answers[0]["status"] == "queued" and answers[1]["status"] == 422
    ids = gateway.publish_many(
        [("room:h", "message", 1), ("room:h", "message", 2)], redis_url="", url=url
    )
    events = httpx.get(url + "/channels/room:h/events").json()["events"]
    assert [e["id"] for e in events] == ids
    wait_until(lambda: job_status(url, job["id"]) == "completed", 20, "job completed")


def test_publish_survives_lost_scripts_a_restart_and_a_fork(redis_server: RedisServer) -> None:
    """`gateway.publish` keeps one connection per thread: it must reload a script Redis lost,
    reconnect to a restarted Redis, and not share its socket with a forked child."""
    import multiprocessing

    url = redis_server.url
    redis_server.flush()
    client = redis.Redis.from_url(url)
    first = gateway.publish("room:p", "message", 1, redis_url=url)
    client.script_flush()
    second = gateway.publish("room:p", "message", 2, redis_url=url)
    child = multiprocessing.get_context("fork").Process(
        target=gateway.publish, args=("room:p", "message", 3), kwargs={"redis_url": url}
    )
    child.start()
    child.join(20)
    assert child.exitcode == 0
    third = gateway.publish("room:p", "message", 4, redis_url=url)
    entries = [entry_id.decode() for entry_id, _f in client.xrange("gw:{room:p}:log")]
    assert len(entries) == 4 and [first, second] == entries[:2] and entries[3] == third
    redis_server.restart()
    after = gateway.publish("room:p", "message", 5, redis_url=url)
    fresh = redis.Redis.from_url(url)
    assert [e.decode() for e, _f in fresh.xrange("gw:{room:p}:log")] == [after]
