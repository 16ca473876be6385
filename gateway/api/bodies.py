"""The JSON bodies of the HTTP API as typed models: what requests must send, what responses carry.

Request models are what the routes validate with (`gateway.api.requests.read_body`), and their
JSON Schema is what `/openapi.json` and `/asyncapi.json` publish (`gateway.api.docs`): one
source, so the checks and the documentation cannot drift apart. Response models describe what
routes build (the routes still encode plain dicts with orjson, the fast path); a test validates
real responses against them and requires each of their keys to be a field, so a new field
cannot go undocumented.

Why pydantic (v2): the settings are validated with pydantic-settings, so one library family
checks both configuration and input; it generates JSON Schema from the same models, and its
errors carry a location (`loc`) that names the offending field (`data.seconds`) in the 422.
Validators are compiled once per model at import, so a request pays only for the check.

Models are strict, like JSON itself: `"5"` is not a number and `true` is not an integer (what
the gateway refused before pydantic, it still refuses). Unknown keys are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, WithJsonSchema

from gateway.events import CHANNEL_RE, EVENT_ID_RE, EVENT_TYPE_RE
from gateway.vocabulary import EventType, JobStatus
from gateway.webhooks.schedule import CALLBACK_EVENT_CHOICES

EVENT_ID_PATTERN: Final = f"^{EVENT_ID_RE.pattern}$"
"""An event id (`<ms>-<seq>`) as a JSON Schema pattern, from the one the gateway parses with."""
CHANNEL_PATTERN: Final = f"^{CHANNEL_RE.pattern}$"

CALLBACK_EVENTS: Final = CALLBACK_EVENT_CHOICES
"""What `callback_events` may name: the job's event types, or `*` for all of them."""


def _known_callback_event(value: str) -> str:
    if value not in CALLBACK_EVENTS:
        raise ValueError(f"unknown event type {value[:60]!r}; known: {', '.join(CALLBACK_EVENTS)}")
    return value


CallbackEvent = Annotated[
    str,
    AfterValidator(_known_callback_event),
    WithJsonSchema({"type": "string", "enum": list(CALLBACK_EVENTS)}),
]
EventTypeName = Annotated[
    str,
    Field(
        pattern=f"^{EVENT_TYPE_RE.pattern}$",
        description="the event's `type`; the gateway's own on job channels: "
        + ", ".join(f"`{t}`" for t in EventType),
    ),
]
ChannelKey = Annotated[str, Field(min_length=1, max_length=200)]


class RequestBody(BaseModel):
    """A request body: strict types, unknown keys ignored, immutable once read."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class ResponseBody(BaseModel):
    """A response body: documentation of what a route returns (see the module docstring)."""


# --- requests ----------------------------------------------------------------------------------


class JobRequest(RequestBody):
    """`POST /jobs`: run a job of `type` on `data` (`GET /job-types` lists the types and the
    schema of each one's `data`)."""

    type: str = Field(min_length=1, description="a registered job type")
    data: Any = Field(None, description="the job type's input; null is `{}`")
    callback_url: str | None = Field(
        None,
        validation_alias=AliasChoices("callback_url", "callbackUrl"),
        description="receives the job's events as signed webhooks (Standard Webhooks)",
    )
    callback_events: list[CallbackEvent] | None = Field(
        None,
        min_length=1,
        validation_alias=AliasChoices("callback_events", "callbackEvents"),
        description="which events go to `callback_url`; by default the terminal ones",
    )
    cancel_when_unwatched: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="cancel the job once its channel has had no subscriber for this many "
        "seconds (docs/presence.md); a watched job is never cancelled this way",
    )


class JobBatchItem(JobRequest):
    """One job of `POST /jobs/batch`: a `POST /jobs` body, and its own idempotency key."""

    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="as `POST /jobs`'s `Idempotency-Key` header (the same keys): a retry of "
        "this job with this key gets the first answer again",
    )


class JobBatchRequest(RequestBody):
    """`POST /jobs/batch`: up to 1000 jobs in one request."""

    jobs: list[JobBatchItem] = Field(min_length=1, max_length=1000)


class EventBatchItem(RequestBody):
    """One event of `POST /events/batch`."""

    channel: str = Field(pattern=CHANNEL_PATTERN)
    type: EventTypeName = "message"
    data: Any = Field(None, description="any JSON; the envelope's `data`")


class EventBatchRequest(RequestBody):
    """`POST /events/batch`: up to 1000 events, on any channels, in one request."""

    events: list[EventBatchItem] = Field(min_length=1, max_length=1000)


class SubmitJobRequest(RequestBody):
    """`POST /submit-job`, the seed documents' name for `POST /jobs`."""

    jobType: str = Field(min_length=1, description="a registered job type")
    jobData: Any = Field(None, description="the job type's input")
    callbackUrl: str | None = None

    def job_request(self) -> JobRequest:
        return JobRequest.model_construct(
            type=self.jobType, data=self.jobData, callback_url=self.callbackUrl
        )


class SubmitTaskRequest(RequestBody):
    """`POST /submitTask`, the seed documents' other name for `POST /jobs`."""

    taskName: str = Field(min_length=1, description="a registered job type")
    parameters: Any = Field(None, description="the job type's input")
    callbackUrl: str | None = None

    def job_request(self) -> JobRequest:
        return JobRequest.model_construct(
            type=self.taskName, data=self.parameters, callback_url=self.callbackUrl
        )


class TokenRequest(RequestBody):
    """`POST /tokens`: a channel token for subject `sub`."""

    sub: str = Field(min_length=1, max_length=200, description="whom the token is for")
    channels: dict[ChannelKey, list[Literal["subscribe", "publish"]]] = Field(
        min_length=1,
        max_length=100,
        description="channel name or `namespace:*` → rights",
    )
    ttl: int | None = Field(
        None,
        ge=1,
        description="lifetime in seconds, at most GATEWAY_MAX_TOKEN_TTL; null or absent: "
        "GATEWAY_TOKEN_TTL",
    )
    subscriptions: list[Annotated[str, Field(pattern=CHANNEL_PATTERN)]] = Field(
        default_factory=list,
        max_length=32,
        description="channels every connection made with the token is subscribed to on "
        "connect (server-side subscriptions, docs/control.md)",
    )


def _close_reason(value: str) -> str:
    if len(value.encode()) > MAX_CLOSE_REASON:
        raise ValueError(f"at most {MAX_CLOSE_REASON} bytes (it is a WebSocket close reason)")
    return value


MAX_CLOSE_REASON: Final = 120
"""A WebSocket close reason is at most 123 bytes of UTF-8."""
CloseReason = Annotated[str, AfterValidator(_close_reason)]


class DisconnectRequest(RequestBody):
    """`POST /users/{sub}/disconnect`: close every connection of the user on every gateway."""

    reason: CloseReason = Field(
        "disconnected",
        max_length=MAX_CLOSE_REASON,
        description="the WebSocket close reason, and the `reason` of the SSE `disconnected` "
        "message (at most 120 bytes)",
    )
    reconnect: bool = Field(
        False,
        description="false: close code 4001 (do not reconnect); true: 4002 (reconnect, e.g. "
        "with a new token)",
    )


class UnsubscribeRequest(RequestBody):
    """`POST /users/{sub}/unsubscribe`: end the user's subscriptions to a channel."""

    channel: str = Field(pattern=CHANNEL_PATTERN, description="the channel to stop")
    reason: str = Field(
        "unsubscribed", max_length=200, description="the `reason` of the `unsubscribed` frame"
    )


class RevokeRequest(RequestBody):
    """`POST /tokens/revoke`: refuse tokens with this `jti` until `exp`."""

    jti: str = Field(min_length=1, max_length=200, description="the token's `jti` claim")
    exp: int | None = Field(
        None,
        ge=0,
        description="Unix seconds: the token's `exp` (the revocation is kept until then); "
        "absent: GATEWAY_MAX_TOKEN_TTL from now, the longest any token lives",
    )


class PublishRequest(RequestBody):
    """`POST /channels/{channel}/events`: publish one event."""

    type: EventTypeName = "message"
    data: Any = Field(None, description="any JSON; the envelope's `data`")


# --- responses ---------------------------------------------------------------------------------


class JobLinks(ResponseBody):
    self: str
    events: str
    ws: str
    history: str
    result: str | None = None


class Job(ResponseBody):
    """A job resource (`GET /jobs/{job_id}`)."""

    id: str
    type: str
    status: JobStatus
    progress: float | None
    message: str | None
    attempts: int
    created_at: str = Field(description="RFC 3339 UTC")
    updated_at: str = Field(description="RFC 3339 UTC")
    last_event_id: str | None
    channel: str = Field(description="`job:<id>`, where the job's events are published")
    links: JobLinks
    result_url: str | None = Field(None, description="once the job completed")
    error: Any = Field(None, description="why the job failed (or the last attempt did)")
    callback_url: str | None = Field(None, description="shown to API keys only")
    callback_events: list[str] | None = None
    webhook: dict[str, Any] | None = Field(None, description="delivery state of the callback")
    token: str | None = Field(None, description="subscribes to this job's channel only")


class JobPage(ResponseBody):
    """`GET /jobs`: newest first; `next_cursor` continues the list."""

    jobs: list[Job]
    next_cursor: str | None
    links: dict[str, str] | None = None


class JobResult(ResponseBody):
    job_id: str
    result: Any


class JobType(ResponseBody):
    name: str
    description: str
    example: Any
    input: dict[str, Any] | None = Field(description="JSON Schema of the type's `data`")


class JobTypes(ResponseBody):
    job_types: list[JobType]


class EventEnvelope(ResponseBody):
    """CloudEvents 1.0 envelope: every event on every channel and transport."""

    specversion: Literal["1.0"]
    id: str = Field(pattern=EVENT_ID_PATTERN, description="`<ms>-<seq>`, resume point")
    source: str
    type: str = Field(
        description="the gateway's own on job channels: " + ", ".join(f"`{t}`" for t in EventType)
    )
    channel: str
    time: str = Field(json_schema_extra={"format": "date-time"})
    data: Any = None


class JobEvent(EventEnvelope):
    """An event on a job's channel `job:<id>`, published by the gateway and its workers."""

    type: EventType


class PublishAccepted(ResponseBody):
    id: str = Field(pattern=EVENT_ID_PATTERN)
    channel: str


class ChannelHistory(ResponseBody):
    channel: str
    complete: bool = Field(description="false: older events were trimmed away")
    more: bool = Field(description="true: ask again with `since=last_id`")
    last_id: str | None
    events: list[EventEnvelope]


class PresenceEntry(ResponseBody):
    """One client subscribed to a channel (docs/presence.md)."""

    client: str = Field(description="the client's id: its `?client=`, else one the gateway chose")
    user: str | None = Field(description="its token's `sub`")
    info: dict[str, Any] | None = Field(description="its token's `info` claim (size-bounded)")


class ChannelPresence(ResponseBody):
    channel: str
    clients: list[PresenceEntry]
    next: str | None = Field(description="`cursor` of the next page; null on the last")


class ChannelPresenceStats(ResponseBody):
    channel: str
    clients: int = Field(ge=0, description="clients subscribed, on every gateway")
    users: int = Field(ge=0, description="distinct token subjects among them")


class TokenGrant(ResponseBody):
    token: str
    sub: str
    channels: dict[str, list[str]]
    expires_at: int = Field(description="Unix time")
    jti: str = Field(description="the token's id: what `POST /tokens/revoke` names")
    subscriptions: list[str] | None = Field(None, description="server-side subscriptions")


class ControlOutcome(ResponseBody):
    """What a control command did on every gateway process."""

    connections: int = Field(description="connections acted on (closed, unsubscribed)")
    gateways: int = Field(description="gateway processes the command reached")
    complete: bool = Field(
        description="every gateway reached answered within 2 s; false: `connections` may "
        "count short (the command was still carried out where it arrived)"
    )


class UserDisconnected(ControlOutcome):
    user: str


class UserUnsubscribed(ControlOutcome):
    user: str
    channel: str


class TokenRevoked(ControlOutcome):
    jti: str
    exp: int = Field(description="Unix time until which the `jti` is refused")


class SubmitJobAccepted(ResponseBody):
    jobId: str
    status: JobStatus
    statusUrl: str
    eventsUrl: str


class SubmitTaskAccepted(ResponseBody):
    taskId: str
    status: JobStatus
    callbackUrl: str | None


class TaskStatus(ResponseBody):
    taskId: str
    status: JobStatus
    resultUrl: str | None
    error: Any = None


class FieldError(ResponseBody):
    loc: str = Field(description="the field, dotted: `data.seconds`, `channels.room:a.0`")
    msg: str


class Problem(ResponseBody):
    """RFC 9457 problem details; some problems add fields (`job_types`, `errors`, ...)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        json_schema_extra={"format": "uri-reference"},
        description="`/problems/<code>` on this gateway: what the problem means",
    )
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = Field(None, description="422: each field that was refused")


class JobBatchAccepted(ResponseBody):
    """`POST /jobs/batch`: per job, in order, its `POST /jobs` answer (it has an `id`) or the
    problem that refused it."""

    jobs: list[Job | Problem]


class EventBatchAccepted(ResponseBody):
    """`POST /events/batch`: per event, in order, where it was published or the problem that
    refused it."""

    events: list[PublishAccepted | Problem]


class Health(ResponseBody):
    status: Literal["ok"]


class Readiness(ResponseBody):
    status: Literal["ready", "not ready"]
    backend: str = Field(description="`redis` or `memory`")
    draining: bool = Field(description="shutting down: streams are being closed")
