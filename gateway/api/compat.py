"""The seed documents' endpoint names, as thin aliases over the same job code."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.access import SUBMISSION, GuardedRoute, job_read
from gateway.api.bodies import SubmitJobRequest, SubmitTaskRequest
from gateway.api.idempotency import idempotent
from gateway.api.jobs import get_result, job_body, load_or_404, submit
from gateway.api.requests import read_json_object
from gateway.api.responses import json_response
from gateway.jobs.services import job_services_of
from gateway.vocabulary import JobStatus


async def submit_job(request: Request) -> Response:
    """`POST /submit-job` with `{"jobType", "jobData"}`."""
    services = job_services_of(request)
    body = await read_json_object(request)

    async def produce() -> Response:
        submission = job_body(services, SubmitJobRequest, body, "jobType")
        record = await submit(services, submission.job_request())
        return json_response(
            {
                "jobId": record.id,
                "status": record.status,
                "statusUrl": f"/jobs/{record.id}",
                "eventsUrl": f"/jobs/{record.id}/events",
            },
            202,
            headers={"Location": f"/jobs/{record.id}"},
        )

    return await idempotent(request, produce)


async def submit_task(request: Request) -> Response:
    """`POST /submitTask` with `{"taskName", "parameters", "callbackUrl"}`."""
    services = job_services_of(request)
    body = await read_json_object(request)

    async def produce() -> Response:
        submission = job_body(services, SubmitTaskRequest, body, "taskName")
        record = await submit(services, submission.job_request())
        return json_response(
            {"taskId": record.id, "status": record.status, "callbackUrl": submission.callbackUrl},
            202,
            headers={"Location": f"/taskStatus/{record.id}"},
        )

    return await idempotent(request, produce)


async def task_status(request: Request) -> Response:
    record = await load_or_404(job_services_of(request), request.path_params["job_id"])
    result_url = f"/results/{record.id}" if record.status == JobStatus.COMPLETED else None
    body: dict[str, object] = {
        "taskId": record.id,
        "status": record.status,
        "resultUrl": result_url,
    }
    if record.error is not None:
        body["error"] = record.error
    return json_response(body)


routes = [
    GuardedRoute("/submit-job", submit_job, methods=["POST"], access=SUBMISSION),
    GuardedRoute("/submitTask", submit_task, methods=["POST"], access=SUBMISSION),
    GuardedRoute("/taskStatus/{job_id}", task_status, methods=["GET"], access=job_read()),
    GuardedRoute("/results/{job_id}", get_result, methods=["GET"], access=job_read()),
]
