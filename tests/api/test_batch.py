"""`POST /jobs/batch` and `POST /events/batch` against a real gateway: each item checked,
authorized, rate-limited and made idempotent as its single route would; per-item problems."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support import GatewayProcess, gateway_env

API_KEY = "batch-test-key-0123456789"
SECRET = "batch-test-secret-0123456789-abcdefghij"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SLEEP = {"type": "sleep", "data": {"seconds": 0, "steps": 1}}


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One secure gateway for the module (each test uses its own channels and keys)."""
    env = gateway_env(
        GATEWAY_API_KEYS=API_KEY,
        GATEWAY_SECRET=SECRET,
        GATEWAY_SUBMIT_RATE="0",
        GATEWAY_MAX_EVENT_SIZE="room=400",
        GATEWAY_HANDLERS="tests.handlers_for_batches",
    )
    process = GatewayProcess(env, tmp_path_factory.mktemp("batch") / "gateway.log")
    process.start()
    yield process
    process.stop(5)


def post(gateway: GatewayProcess, path: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, headers={**AUTH, **headers}, timeout=10)


def test_jobs_batch_answers_each_job_in_order(secure: GatewayProcess) -> None:
    jobs = [SLEEP, {"type": "nope"}, {"type": "sleep", "data": {"seconds": -1}}, 7, SLEEP]
    response = post(secure, "/jobs/batch", {"jobs": jobs})
    assert response.status_code == 202
    answers = response.json()["jobs"]
    assert [answer.get("status") for answer in answers] == ["queued", 422, 422, 422, "queued"]
    assert answers[1]["type"] == "/problems/unprocessable" and "sleep" in answers[1]["job_types"]
    assert answers[2]["errors"][0]["loc"] == "data.seconds"
    first, last = answers[0], answers[4]
    assert first["id"] != last["id"]
    for job in (first, last):
        # Each job's own token reads that job, and only that one.
        own = httpx.get(f"{secure.url}/jobs/{job['id']}", params={"token": job["token"]})
        assert own.status_code == 200 and own.json()["type"] == "sleep"
    other = httpx.get(f"{secure.url}/jobs/{last['id']}", params={"token": first["token"]})
    assert other.status_code == 403
    history = httpx.get(f"{secure.url}/channels/job:{first['id']}/events", headers=AUTH).json()
    assert [e["type"] for e in history["events"]][:1] == ["job.queued"]
    assert history["events"][0]["id"] == first["last_event_id"]


def test_jobs_batch_needs_what_post_jobs_needs(secure: GatewayProcess) -> None:
    refused = httpx.post(secure.url + "/jobs/batch", json={"jobs": [SLEEP]})
    single = httpx.post(secure.url + "/jobs", json=SLEEP)
    assert refused.status_code == single.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == single.json()["type"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"jobs": []}, 422, "unprocessable"),
        ({"jobs": {"type": "sleep"}}, 422, "unprocessable"),
        ({}, 422, "unprocessable"),
        ({"jobs": [SLEEP] * 1001}, 413, "batch-too-large"),
    ],
)
def test_jobs_batch_refuses_malformed_batches(
    secure: GatewayProcess, body: Any, status: int, code: str
) -> None:
    response = post(secure, "/jobs/batch", body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == f"/problems/{code}"
    if status == 413:
        assert response.json()["max_items"] == 1000


def test_jobs_batch_bad_json_is_a_problem(secure: GatewayProcess) -> None:
    response = httpx.post(
        secure.url + "/jobs/batch",
        content=b'{"jobs": [',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


def test_jobs_batch_items_are_idempotent_by_their_keys(secure: GatewayProcess) -> None:
    first = post(secure, "/jobs/batch", {"jobs": [{**SLEEP, "idempotency_key": "k-1"}]})
    again = post(
        secure,
        "/jobs/batch",
        {"jobs": [{"idempotency_key": "k-1", **SLEEP}, {**SLEEP, "idempotency_key": "k-2"}]},
    )
    one = first.json()["jobs"][0]
    replayed, fresh = again.json()["jobs"]
    assert replayed["id"] == one["id"] and fresh["id"] != one["id"]
    reused = post(
        secure, "/jobs/batch", {"jobs": [{"type": "sleep", "data": {}, "idempotency_key": "k-1"}]}
    ).json()["jobs"][0]
    assert reused["status"] == 422 and reused["type"] == "/problems/idempotency-key-reused"
    # The same key space as the header of POST /jobs: a retry there gets the batch's answer.
    single = post(
        secure,
        "/jobs",
        {"type": "sleep", "data": {"seconds": 0, "steps": 1}},
        **{"Idempotency-Key": "k-2"},
    )
    assert single.status_code == 202 and single.json()["id"] == fresh["id"]
    assert single.headers["idempotent-replayed"] == "true"


def test_a_jobs_batch_lets_other_clients_in_between_its_items(secure: GatewayProcess) -> None:
    """A batch's items are checked in slices, each followed by a pass of the event loop: a
    1000-job batch does not hold every other connection of the process while it is checked.
    Each `loop_pass` job is refused naming the loop pass its check ran in."""
    response = post(secure, "/jobs/batch", {"jobs": [{"type": "loop_pass"}] * 1000})
    assert response.status_code == 202
    details = [answer["detail"] for answer in response.json()["jobs"]]
    passes = {detail.rpartition("loop pass ")[2] for detail in details}
    assert len(passes) >= 1000 // 64, f"checked in {len(passes)} loop pass(es)"


def test_jobs_batch_counts_every_job_against_the_submission_rate(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(
        GATEWAY_API_KEYS=API_KEY, GATEWAY_SUBMIT_RATE="0.01", GATEWAY_SUBMIT_BURST="3"
    )
    answers = post(gateway, "/jobs/batch", {"jobs": [SLEEP] * 5}).json()["jobs"]
    assert [answer["status"] for answer in answers] == ["queued"] * 3 + [429, 429]
    assert answers[3]["type"] == "/problems/rate-limited"
    assert post(gateway, "/jobs", SLEEP).status_code == 429


def test_events_batch_publishes_each_on_its_channel(secure: GatewayProcess) -> None:
    events = [
        {"channel": "room:a", "type": "message", "data": {"n": 1}},
        {"channel": "room:b", "data": {"n": 2}},
        {"channel": "nope", "data": 0},
        {"channel": "secret:x", "data": 0},
        {"channel": "room:a", "type": "bad type!", "data": 0},
        {"channel": "room:a", "data": "x" * 1000},
        "not an object",
        {"channel": "room:a", "type": "message", "data": {"n": 3}},
    ]
    response = post(secure, "/events/batch", {"events": events})
    assert response.status_code == 200
    answers = response.json()["events"]
    statuses = [answer.get("status", "ok") for answer in answers]
    assert statuses == ["ok", "ok", 400, 403, 422, 413, 422, "ok"]
    assert answers[5]["type"] == "/problems/event-too-large"
    assert answers[5]["max_event_size"] == 400
    assert answers[1]["channel"] == "room:b"
    history = httpx.get(secure.url + "/channels/room:a/events", headers=AUTH).json()
    assert [e["id"] for e in history["events"]] == [answers[0]["id"], answers[7]["id"]]
    assert [e["data"]["n"] for e in history["events"]] == [1, 3]


def test_events_batch_is_for_api_keys(secure: GatewayProcess) -> None:
    token = httpx.post(
        secure.url + "/tokens",
        json={"sub": "u", "channels": {"room:t": ["publish", "subscribe"]}},
        headers=AUTH,
    ).json()["token"]
    body = {"events": [{"channel": "room:t", "data": 1}]}
    with_token = httpx.post(
        secure.url + "/events/batch", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert with_token.status_code == 401  # an API key is what it asks for
    # The single route takes the same token: a batch may not do more than it, only less.
    single = httpx.post(
        secure.url + "/channels/room:t/events",
        json={"data": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert single.status_code == 202
    history = httpx.get(secure.url + "/channels/room:t/events", headers=AUTH).json()
    assert len(history["events"]) == 1


def test_events_batch_cap(secure: GatewayProcess) -> None:
    body = {"events": [{"channel": "room:cap", "data": 1}] * 1001}
    response = post(secure, "/events/batch", body)
    assert response.status_code == 413 and response.json()["max_items"] == 1000
    history = httpx.get(secure.url + "/channels/room:cap/events", headers=AUTH).json()
    assert history["events"] == []
