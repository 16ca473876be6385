"""Request bodies are checked by their models (a 422 that names each field), and what the routes
answer fits the response models the documents publish: every key a documented field."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from gateway.api import bodies
from gateway.api.requests import LISTED_ERRORS
from tests.support import GatewayProcess, wait_until


def fits(model: type[BaseModel], body: dict[str, Any]) -> None:
    """`body` validates as `model`, and has no key the model does not document."""
    model.model_validate(body)
    undocumented = set(body) - set(model.model_fields)
    assert not undocumented or model.model_config.get("extra") == "allow", (model, undocumented)


def refusal(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["type"] == "/problems/unprocessable"
    fits(bodies.Problem, problem)
    return problem


def test_bad_job_data_names_the_field(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    problem = refusal(httpx.post(url + "/jobs", json={"type": "sleep", "data": {"seconds": "x"}}))
    assert (
        problem["detail"]
        == "invalid data for 'sleep': data.seconds: Input should be a valid number"
    )
    assert problem["errors"] == [{"loc": "data.seconds", "msg": "Input should be a valid number"}]
    both = refusal(
        httpx.post(url + "/jobs", json={"type": "sleep", "data": {"seconds": -1, "steps": 0}})
    )
    assert [error["loc"] for error in both["errors"]] == ["data.seconds", "data.steps"]
    analysis = refusal(httpx.post(url + "/jobs", json={"type": "data_analysis", "data": {}}))
    assert analysis["errors"] == [
        {"loc": "data", "msg": "give exactly one of data.csv (inline CSV text) or data.path"}
    ]


def test_a_body_of_many_bad_items_gets_a_bounded_answer(
    embedded_gateway: GatewayProcess,
) -> None:
    """Thousands of refused items list at most `LISTED_ERRORS`, and say how many there were:
    the answer must not grow with what a client chooses to send."""
    bad = [7] * 20_000
    response = httpx.post(
        embedded_gateway.url + "/jobs", json={"type": "sleep", "callback_events": bad}
    )
    problem = refusal(response)
    assert len(problem["errors"]) == LISTED_ERRORS and problem["errors_total"] == 20_000
    assert len(response.content) < 10_000, len(response.content)


def test_bad_submission_fields_are_named(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    missing = refusal(httpx.post(url + "/jobs", json={}))
    assert missing["errors"] == [{"loc": "type", "msg": "Field required"}]
    assert "sleep" in missing["job_types"]
    numeric = refusal(httpx.post(url + "/jobs", json={"type": 7}))
    assert numeric["detail"] == "type: Input should be a valid string" and numeric["job_types"]
    events = refusal(
        httpx.post(url + "/jobs", json={"type": "sleep", "callback_events": ["job.done"]})
    )
    assert events["errors"][0]["loc"] == "callback_events.0"
    assert "unknown event type 'job.done'" in events["detail"]
    seed = refusal(httpx.post(url + "/submitTask", json={"taskName": ""}))
    assert seed["errors"][0]["loc"] == "taskName" and "job_types" in seed
    seed_data = refusal(
        httpx.post(url + "/submit-job", json={"jobType": "sleep", "jobData": {"steps": "2"}})
    )
    assert seed_data["errors"] == [{"loc": "data.steps", "msg": "Input should be a valid integer"}]


def test_bad_publish_and_token_fields_are_named(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    publish = refusal(httpx.post(url + "/channels/room:x/events", json={"type": "bad type!"}))
    assert publish["errors"][0]["loc"] == "type"
    rights = refusal(
        httpx.post(url + "/tokens", json={"sub": "a", "channels": {"room:a": ["own"]}})
    )
    assert rights["errors"][0]["loc"] == "channels.room:a.0"
    ttl = refusal(
        httpx.post(
            url + "/tokens", json={"sub": "a", "channels": {"room:a": ["subscribe"]}, "ttl": 10**9}
        )
    )
    assert ttl["errors"][0]["loc"] == "ttl" and ttl["detail"].startswith("ttl: ")
    many = refusal(httpx.post(url + "/tokens", json={"sub": 1, "channels": [], "ttl": "x"}))
    assert {error["loc"] for error in many["errors"]} == {"sub", "channels", "ttl"}


def test_job_types_show_each_input_schema(embedded_gateway: GatewayProcess) -> None:
    listed = httpx.get(embedded_gateway.url + "/job-types").json()
    fits(bodies.JobTypes, listed)
    by_name = {entry["name"]: entry for entry in listed["job_types"]}
    sleep = by_name["sleep"]
    assert set(sleep) == {"name", "description", "example", "input"}
    assert sleep["input"]["properties"]["seconds"]["maximum"] == 3600
    assert sleep["input"]["properties"]["steps"]["default"] == 5
    assert by_name["data_analysis"]["input"]["properties"]["chunk_rows"]["minimum"] == 1


def test_openapi_describes_data_per_job_type(embedded_gateway: GatewayProcess) -> None:
    document = httpx.get(embedded_gateway.url + "/openapi.json").json()
    body = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    assert schema["discriminator"]["propertyName"] == "type"
    assert {"sleep", "fail", "data_analysis"} <= set(schema["discriminator"]["mapping"])
    schemas = document["components"]["schemas"]
    sleep = schemas["SleepJob"]["properties"]
    assert sleep["type"]["const"] == "sleep"
    assert {"$ref": "#/components/schemas/SleepInput"} in sleep["data"]["anyOf"]
    assert schemas["JobStatus"]["enum"] == [
        "queued",
        "running",
        "retrying",
        "completed",
        "failed",
        "cancelled",
    ]
    asyncapi = httpx.get(embedded_gateway.url + "/asyncapi.json").json()
    assert "job.progress" in asyncapi["components"]["schemas"]["EventType"]["enum"]


def test_responses_fit_their_models(embedded_gateway: GatewayProcess) -> None:
    url = embedded_gateway.url
    created = httpx.post(url + "/jobs", json={"type": "sleep", "data": {"seconds": 0, "steps": 1}})
    fits(bodies.Job, created.json())
    job_id = created.json()["id"]
    wait_until(lambda: httpx.get(f"{url}/jobs/{job_id}").json()["status"] == "completed", 10)
    done = httpx.get(f"{url}/jobs/{job_id}").json()
    fits(bodies.Job, done)
    fits(bodies.JobLinks, done["links"])
    fits(bodies.JobResult, httpx.get(f"{url}/jobs/{job_id}/result").json())
    page = httpx.get(url + "/jobs?limit=1").json()
    fits(bodies.JobPage, page)
    for job in page["jobs"]:
        fits(bodies.Job, job)
    history = httpx.get(f"{url}/channels/job:{job_id}/events").json()
    fits(bodies.ChannelHistory, history)
    for event in history["events"]:
        fits(bodies.JobEvent, event)
    published = httpx.post(url + "/channels/room:fit/events", json={"type": "t", "data": 1})
    fits(bodies.PublishAccepted, published.json())
    room = httpx.get(url + "/channels/room:fit/events").json()
    fits(bodies.EventEnvelope, room["events"][0])
    token = httpx.post(url + "/tokens", json={"sub": "a", "channels": {"room:a": ["subscribe"]}})
    fits(bodies.TokenGrant, token.json())
    seed = httpx.post(url + "/submit-job", json={"jobType": "sleep", "jobData": {"seconds": 0}})
    fits(bodies.SubmitJobAccepted, seed.json())
    task = httpx.post(url + "/submitTask", json={"taskName": "fail", "parameters": {}})
    fits(bodies.SubmitTaskAccepted, task.json())
    task_id = task.json()["taskId"]
    wait_until(lambda: httpx.get(f"{url}/taskStatus/{task_id}").json()["status"] == "failed", 20)
    fits(bodies.TaskStatus, httpx.get(f"{url}/taskStatus/{task_id}").json())
    fits(bodies.Health, httpx.get(url + "/healthz").json())
    fits(bodies.Readiness, httpx.get(url + "/readyz").json())
