"""HTTP routes for jobs: submit, status (with long polling), result, cancel, event stream."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from typing import Any, Final, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.access import PUBLIC, SERVER, SERVER_ONLY, SUBMISSION, GuardedRoute, job_read
from gateway.api.bodies import JobRequest
from gateway.api.guards import caller_of, submission_key, too_many
from gateway.api.idempotency import BatchClaims, idempotent, item_fingerprint
from gateway.api.requests import (
    batch_items,
    event_id_param,
    float_param,
    int_param,
    invalid_fields,
    read_json_object,
)
from gateway.api.responses import json_response
from gateway.errors import InvalidJobData, UnsafeCallbackUrl
from gateway.events import parse_event_id
from gateway.jobs.model import (
    JobRecord,
    create_jobs,
    job_channel,
    load_job,
    new_job,
    transition,
)
from gateway.jobs.registry import HandlerRegistry, field_errors
from gateway.jobs.services import JobServices, job_services_of
from gateway.problems import Problem, bad_request, conflict, not_found, unprocessable
from gateway.settings import Settings
from gateway.transports.longpoll import LongPoll
from gateway.transports.sse import EventStream, parse_positions
from gateway.vocabulary import EventType, JobStatus
from gateway.webhooks import check_callback_url, parse_callback_events

RETRY_AFTER_SECONDS = "1"
JobBody = TypeVar("JobBody", bound=BaseModel)


async def submit(services: JobServices, request: JobRequest) -> JobRecord:
    """Check `data` against its type's input and create the job; shared by `POST /jobs` and
    the seed-compatible aliases (the body's own fields were checked by its model)."""
    record, unwatched = await checked_job(services, request)
    await create_jobs(services.backend, [record])
    if unwatched is not None:
        await services.occupancy.watch(record.id, unwatched)
    return record


async def checked_job(services: JobServices, request: JobRequest) -> tuple[JobRecord, float | None]:
    """The new job `request` asks for (not stored yet) and its `cancel_when_unwatched`; a
    `Problem` (422) when its type, data or callback cannot be used."""
    record = job_from_request(services.registry, request)
    if record.callback_url:
        await checked_callback(record.callback_url, services.settings)
    return record, request.cancel_when_unwatched


def job_from_request(registry: HandlerRegistry, request: JobRequest) -> JobRecord:
    """The job `request` asks for, its type and data checked (not its callback URL's address:
    `checked_callback`); a `Problem` (422) when they cannot be used. `gateway.submit` checks
    jobs with this too."""
    type_ = request.type
    spec = registry.get(type_)
    if spec is None:
        raise unprocessable(f"unknown job type {type_!r}", job_types=registry.names())
    try:
        events = parse_callback_events(request.callback_events)
    except ValueError as exc:
        raise unprocessable(str(exc)) from None
    try:
        checked = spec.check(request.data)
    except InvalidJobData as exc:
        if exc.errors:
            raise invalid_fields(exc.errors, "data", f"invalid data for {type_!r}: ") from None
        raise unprocessable(  # a validator function's message names its fields itself
            f"invalid data for {type_!r}: {exc}", errors=[{"loc": "data", "msg": str(exc)}]
        ) from None
    return new_job(
        type_, checked, callback_url=request.callback_url or None, callback_events=events
    )


async def checked_callback(callback_url: str, settings: Settings) -> None:
    """422 for a callback URL that is not http(s) or names a private address."""
    try:
        await check_callback_url(callback_url, allow_private=settings.webhook_allow_private)
    except UnsafeCallbackUrl as exc:
        raise unprocessable(f"callback_url refused: {exc}") from None


def accepted(services: JobServices, record: JobRecord) -> dict[str, Any]:
    """The answer to a submission: the job resource and the job's own token."""
    resource = record.resource()
    resource["token"] = services.policy.job_token(record.id, services.settings.token_ttl)
    return resource


def job_body(
    services: JobServices, model: type[JobBody], body: dict[str, Any], type_field: str = "type"
) -> JobBody:
    """`body` as `model`; a missing or empty job type is answered with the known job types
    (`job_types`), as an unknown one is."""
    return parsed_job_body(services.registry, model, body, type_field)


def parsed_job_body(
    registry: HandlerRegistry, model: type[JobBody], body: Any, type_field: str = "type"
) -> JobBody:
    """`job_body` for a registry (`gateway.submit` has no services)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = field_errors(exc)
        if any(loc == type_field for loc, _ in errors):
            raise invalid_fields(errors, job_types=registry.names()) from None
        raise invalid_fields(errors) from None


async def load_or_404(services: JobServices, job_id: str) -> JobRecord:
    if len(job_id) > 64:
        raise not_found(f"no job {job_id[:64]!r}")
    record = await load_job(services.backend, job_id)
    if record is None:
        raise not_found(f"no job {job_id!r} (unknown, or expired after its retention time)")
    return record


async def post_job(request: Request) -> Response:
    services = job_services_of(request)
    body = await read_json_object(request)

    async def produce() -> Response:
        record = await submit(services, job_body(services, JobRequest, body))
        return json_response(
            accepted(services, record), 202, headers={"Location": f"/jobs/{record.id}"}
        )

    return await idempotent(request, produce, lambda: item_fingerprint(body))


MAX_BATCH_JOBS: Final = 1000
"""Jobs one `POST /jobs/batch` may carry (413 beyond); the body limit applies too."""
BATCH_SLICE: Final = 64
"""Jobs a batch checks before it lets the event loop run other work: checking a job (its
model, its data) holds the loop, and 1000 in a row held every other connection of the
process for a few hundred milliseconds on a loaded machine."""


async def post_jobs_batch(request: Request) -> Response:
    """`{"jobs": [<POST /jobs body>, ...]}`: each job checked, rate-limited and made idempotent
    (`idempotency_key` in the item) as `POST /jobs` would; all accepted ones stored, announced
    and queued in one round trip. The answer lists, in order, each job's `POST /jobs` answer or
    the problem that refused it."""
    services = job_services_of(request)
    items = batch_items(await read_json_object(request), "jobs", MAX_BATCH_JOBS)
    caller = caller_of(request.scope)
    limiter, who = services.limits.submit, submission_key(request.scope, caller)
    answers: list[dict[str, Any] | None] = [None] * len(items)
    claims = BatchClaims(services, request.scope)
    chosen: list[tuple[int, JobRecord, float | None]] = []
    for index, item in enumerate(items):
        if index and index % BATCH_SLICE == 0:
            await asyncio.sleep(0)
        try:
            if index:  # the guard took the first submission's token
                wait = limiter.take(who)
                if wait > 0:
                    raise too_many("too many job submissions; slow down", wait)
            if not isinstance(item, dict):
                raise unprocessable(
                    "each job is an object, as POST /jobs takes",
                    errors=[{"loc": f"jobs.{index}", "msg": "must be an object"}],
                )
            replay = await claims.claim(index, item)
            if replay is not None:
                answers[index] = replay
                continue
            record, unwatched = await checked_job(services, job_body(services, JobRequest, item))
        except Problem as problem:
            await claims.abandon(index)
            answers[index] = problem.body()
            continue
        chosen.append((index, record, unwatched))
    try:
        await create_jobs(services.backend, [record for _index, record, _unwatched in chosen])
    except BaseException:
        await claims.abandon_all()
        raise
    for index, record, unwatched in chosen:
        if unwatched is not None:
            await services.occupancy.watch(record.id, unwatched)
        answers[index] = accepted(services, record)
    await claims.finish(answers)
    return json_response({"jobs": answers}, 202)


async def get_job(request: Request) -> Response:
    services = job_services_of(request)
    job_id = request.path_params["job_id"]
    since = event_id_param(request.query_params.get("since"))
    wait = float_param(request, "wait", 0.0, 0.0, services.settings.max_wait)
    record = await load_or_404(services, job_id)
    if wait > 0 and not record.terminal and not _newer(record, since):
        poll = LongPoll(services.hub, services.control.sessions, caller_of(request.scope).token)
        await poll.wait(job_channel(job_id), since or record.last_event_id, wait)
        record = await load_or_404(services, job_id)
    # The callback URL may carry the receiver's secret: it is the submitter's (server-side)
    # business, not the browser's that reads the job with its job token.
    server = caller_of(request.scope).api_key is not None or not services.api_keys.enabled
    return job_response(record, request.headers.get("if-none-match"), show_callback=server)


def job_response(
    record: JobRecord, if_none_match: str | None = None, *, show_callback: bool = True
) -> Response:
    """The job resource with its version as `ETag`; `304` when the client has that version."""
    resource = record.resource()
    if not show_callback:
        resource.pop("callback_url", None)
    body = orjson.dumps(resource)
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if not record.terminal:
        headers["Retry-After"] = RETRY_AFTER_SECONDS
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison, as RFC 9110 asks for `If-None-Match`."""
    candidates = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


def _newer(record: JobRecord, since: str | None) -> bool:
    if since is None or record.last_event_id is None:
        return False
    return parse_event_id(record.last_event_id) > parse_event_id(since)


def _at_or_after(position: str | None, last_event_id: str | None) -> bool:
    if position is None or last_event_id is None:
        return False
    return parse_event_id(position) >= parse_event_id(last_event_id)


async def get_result(request: Request) -> Response:
    record = await load_or_404(job_services_of(request), request.path_params["job_id"])
    if record.status != JobStatus.COMPLETED:
        raise conflict(
            f"job {record.id} is {record.status}; its result exists once it is completed",
            job_status=record.status,
        )
    return json_response({"job_id": record.id, "result": record.result})


async def cancel_job(request: Request) -> Response:
    services = job_services_of(request)
    record = await load_or_404(services, request.path_params["job_id"])
    if record.terminal:
        raise conflict(
            f"job {record.id} already ended as {record.status}", job_status=record.status
        )
    event = await transition(
        services.backend,
        record.id,
        EventType.CANCELLED,
        {"reason": "cancelled by request", "was": record.status},
        expire=services.settings.job_ttl,
        callback=record.callback,
    )
    if event is None:
        record = await load_or_404(services, record.id)
        raise conflict(
            f"job {record.id} already ended as {record.status}", job_status=record.status
        )
    record = await load_or_404(services, record.id)
    return job_response(record)


async def job_events(request: Request) -> Response:
    services = job_services_of(request)
    job_id = request.path_params["job_id"]
    raw = request.headers.get("last-event-id") or request.query_params.get("since")
    channel = job_channel(job_id)
    positions = parse_positions(raw, [channel])
    record = await load_or_404(services, job_id)
    if record.terminal and _at_or_after(positions[channel], record.last_event_id):
        # EventSource reconnects whenever a stream ends; 204 is what makes it stop for good.
        return Response(status_code=204)
    caller = caller_of(request.scope)
    return EventStream(
        services.hub,
        services.settings,
        positions,
        end_after_terminal=True,
        expires_at=caller.expires_at,
        token=caller.token,
        sessions=services.control.sessions,
    )


LIST_SCAN_BUDGET = 1000
"""Index entries one `GET /jobs` page may look at; a sparse filter returns a shorter page."""


async def list_jobs(request: Request) -> Response:
    """Recent jobs, newest first, `limit` at a time; `next_cursor` continues where this stopped.

    The index may name jobs that expired; they are skipped here and pruned from it.
    """
    services = job_services_of(request)
    limit = int_param(request, "limit", 20, 1, 200)
    statuses = _filter_param(request, "status")
    if statuses and not statuses <= set(JobStatus):
        raise bad_request(f"status must be {', '.join(JobStatus)}")
    types = _filter_param(request, "type")
    before = _decode_cursor(request.query_params.get("cursor"))
    found: list[dict[str, Any]] = []
    scanned = 0
    more = True
    while more and len(found) < limit and scanned < LIST_SCAN_BUDGET:
        batch = await services.backend.jobs.job_index(before, 100)
        more = len(batch) == 100
        gone = []
        for index, pair in enumerate(batch):
            record = await load_job(services.backend, pair[1])
            before, scanned = pair, scanned + 1
            if record is None:
                gone.append(pair[1])
            elif (not statuses or record.status in statuses) and (
                not types or record.type in types
            ):
                found.append(record.resource())
                if len(found) == limit:
                    more = more or index < len(batch) - 1
                    break
        await services.backend.jobs.unindex(gone)
    cursor = _encode_cursor(before) if more and before is not None else None
    body: dict[str, Any] = {"jobs": found, "next_cursor": cursor}
    if cursor is not None:
        kept = "&".join(f"{k}={v}" for k, v in request.query_params.multi_items() if k != "cursor")
        body["links"] = {"next": f"/jobs?{kept + '&' if kept else ''}cursor={cursor}"}
    return json_response(body)


def _filter_param(request: Request, name: str) -> set[str]:
    values = request.query_params.getlist(name)
    return {part for value in values for part in value.split(",") if part}


def _encode_cursor(position: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(f"{position[0]}:{position[1]}".encode()).decode().rstrip("=")


def _decode_cursor(raw: str | None) -> tuple[int, str] | None:
    if not raw:
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        ms, _, job_id = text.partition(":")
        return int(ms), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_request("cursor is not one this API returned") from None


async def job_types(request: Request) -> Response:
    registry = job_services_of(request).registry
    return json_response(
        {
            "job_types": [
                {
                    "name": spec.name,
                    "description": spec.description,
                    "example": spec.example,
                    "input": spec.input_schema(),
                }
                for spec in registry.specs()
            ]
        }
    )


routes = [
    GuardedRoute("/jobs", post_job, methods=["POST"], access=SUBMISSION),
    GuardedRoute("/jobs/batch", post_jobs_batch, methods=["POST"], access=SUBMISSION),
    GuardedRoute("/jobs", list_jobs, methods=["GET"], access=SERVER_ONLY),
    GuardedRoute("/job-types", job_types, methods=["GET"], access=PUBLIC),
    GuardedRoute("/jobs/{job_id}", get_job, methods=["GET"], access=job_read()),
    GuardedRoute("/jobs/{job_id}/result", get_result, methods=["GET"], access=job_read()),
    GuardedRoute("/jobs/{job_id}/cancel", cancel_job, methods=["POST"], access=SERVER),
    GuardedRoute(
        "/jobs/{job_id}/events", job_events, methods=["GET"], access=job_read(stream=True)
    ),
]
