"""Every exception the gateway raises on purpose, under one root.

The tree (indentation is inheritance)::

    GatewayError
        InvalidInput (also ValueError): what a caller sent cannot be used
            InvalidChannel
            InvalidEventId
            InvalidEventType
            InvalidJobData
            EventTooLarge
            UnsafeCallbackUrl
                UnresolvedCallbackHost
            ProtocolError: a WebSocket frame that is not a `gateway.v1` command
            MalformedMessage: a bridged broker message that maps to no event
        AccessDenied: the caller may not do this
            Forbidden
            InvalidToken
        Unavailable (also ConnectionError): the bus or a store cannot be reached; retry
            BackendUnavailable
                ReplicasBehind: a publish not acknowledged by the replicas it must wait for
        RateLimited: the caller publishes faster than its limit; retry after `retry_after`
        OpError: a WebSocket op that cannot be done; the connection stays open
        SettingsError (also ValueError): a configuration value that cannot be used
        UnsupportedServer (also RuntimeError): uvicorn lacks an internal the fast path uses
        HandlerError: a job handler fails its attempt on purpose
        PublishError (also RuntimeError): `gateway.publish()` could not publish
            EventTooLargeError
        ClientError (also RuntimeError): a `gateway.client` request failed; `status`, `code`
            RequestInvalid (also ValueError): 400/413/422 or an `invalid_*` error frame
            RequestForbidden: 401/403 or a `forbidden`/`token_*` error frame
            NotFound: 404, such as a job id the gateway does not know
            Conflict: 409, such as an idempotency key whose first request is in flight
            RequestRateLimited: 429 or `rate_limited`; retry after `retry_after` seconds
            GatewayUnavailable (also ConnectionError): no answer, or 5xx; retry later
            Disconnected: the gateway closed the connection for good (close 4001 or 1008)

Each error carries a `code`, the machine-readable word that goes out to clients. Errors become
`application/problem+json` in one place (`gateway.problems.problem_for`) and WebSocket `error`
frames in one place (`gateway.protocol.v1`); nothing else turns an error into a response.
`Problem` (`gateway.problems`) is the HTTP answer itself, raised by routes; it is a
`GatewayError` too.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """The root: catch this to catch every error the gateway raises on purpose."""

    code: str = "error"


class InvalidInput(GatewayError, ValueError):
    """What a caller sent cannot be used: answered with 400/413/422 or an `error` frame."""

    code = "invalid"


class InvalidChannel(InvalidInput):
    """A channel name outside `[A-Za-z0-9_.:-]{1,200}` or without a namespace."""

    code = "invalid_channel"


class InvalidEventId(InvalidInput):
    """An event id that is not of the form `<ms>-<seq>`."""

    code = "invalid_since"


class InvalidEventType(InvalidInput):
    """An event type outside `[A-Za-z0-9_.:-]{1,100}`; `field` and `rule` let HTTP quote the
    member name (`'type' must be ...`) where WebSocket says `type must be ...`."""

    code = "invalid_type"

    def __init__(self, field: str = "type") -> None:
        self.field = field
        self.rule = "must be 1-100 characters of [A-Za-z0-9_.:-]"
        super().__init__(f"{field} {self.rule}")


class InvalidJobData(InvalidInput):
    """The job's `data` does not fit its type; answered with 422 at submission.

    `errors` names the fields, as (dotted location inside `data`, message) pairs, when the
    handler's input model found them; a validator function's message stands alone.
    """

    code = "invalid_data"

    def __init__(self, message: str, errors: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.errors = errors


class EventTooLarge(InvalidInput):
    """An event over its namespace's `GATEWAY_MAX_EVENT_SIZE`: refused before it is stored.

    A room keeps hundreds of events and replays them to every subscriber, so one publisher's
    large events would cost every reader; HTTP answers 413, WebSocket an `error` frame.
    """

    code = "event_too_large"

    def __init__(self, channel: str, size: int, limit: int) -> None:
        super().__init__(
            f"the event is {size} bytes encoded; {channel} takes at most {limit} "
            "(GATEWAY_MAX_EVENT_SIZE)"
        )
        self.channel = channel
        self.size = size
        self.limit = limit


class UnsafeCallbackUrl(InvalidInput):
    """A callback URL the gateway refuses to call: not http(s), or aimed at internal addresses.

    Raised at submission (answered with 422) and, at delivery, from inside the connection
    attempt (`PinnedNetwork`), which ends the delivery as refused.
    """

    code = "unsafe_callback"


class UnresolvedCallbackHost(UnsafeCallbackUrl):
    """The callback host has no address (now): 422 at submission, a retried network error at
    delivery (DNS may come back)."""


class ProtocolError(InvalidInput):
    """A WebSocket frame that is not a `gateway.v1` command: an `error` frame answers it."""

    code = "bad_request"

    def __init__(
        self, message: str, code: str = "bad_request", *, ref: int | str | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        """The `ref` of the frame, when it was an object with one: the error frame echoes it."""
        self.extra = extra


class MalformedMessage(InvalidInput):
    """A message a bridge consumed that no route turns into an event (not JSON, no route, a
    channel or type its rules cannot make): counted, dead-lettered or dropped, never retried."""

    code = "malformed_message"


class AccessDenied(GatewayError):
    """The caller may not do this: 401 (credentials) or 403 (rights)."""

    code = "forbidden"


class Forbidden(AccessDenied):
    """The caller may not do this on this channel; the message says why.

    `code` is `forbidden` (credentials are fine but do not allow this), `token_required`,
    `invalid_token` or `token_expired` (the credentials themselves are the problem: HTTP 401).
    """

    def __init__(self, message: str, code: str = "forbidden") -> None:
        super().__init__(message)
        self.code = code

    @property
    def status(self) -> int:
        return 403 if self.code == "forbidden" else 401


class InvalidToken(AccessDenied):
    """A token that cannot be used; `code` is `token_expired` or `invalid_token`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Unavailable(GatewayError, ConnectionError):
    """Something the gateway depends on cannot be reached right now; the request may be
    retried (503 with `Retry-After`)."""

    code = "unavailable"


class BackendUnavailable(Unavailable):
    """The bus or a store cannot be reached right now; the request may be retried."""


class ReplicasBehind(BackendUnavailable):
    """A publish that `GATEWAY_REPLICA_WAIT` asks to be acknowledged by replicas was not, in
    time: it is stored on the master (and may be delivered) but would not survive its loss."""


class RateLimited(GatewayError):
    """Publishing faster than `GATEWAY_PUBLISH_RATE`: HTTP 429, WebSocket `rate_limited`."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpError(GatewayError):
    """A client op that cannot be done; becomes an `error` frame, the connection stays open."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class SettingsError(GatewayError, ValueError):
    """A configuration value that cannot be used; the message names the variable."""

    code = "settings"


class UnsupportedServer(GatewayError, RuntimeError):
    """The installed uvicorn (or websockets) lacks an internal the gateway's own protocols
    reach; raised when `gateway serve` starts, naming the attribute and the tested versions."""

    code = "unsupported_server"


class HandlerError(GatewayError):
    """Raised by a handler to fail the attempt with a message meant for the job's owner."""

    code = "handler_failed"


class PublishError(GatewayError, RuntimeError):
    """`gateway.publish()` could not publish; the message says where and why."""

    code = "publish_failed"


class EventTooLargeError(PublishError):
    """The event is over its namespace's `GATEWAY_MAX_EVENT_SIZE`; retrying will not help."""

    code = "event_too_large"

    def __init__(self, message: str, limit: int | None) -> None:
        super().__init__(message)
        self.limit = limit


class ClientError(GatewayError, RuntimeError):
    """A request made by `gateway.client` failed; the message carries the gateway's detail.

    `status` is the HTTP status (None for a WebSocket `error` frame or no answer at all) and
    `code` the gateway's machine-readable word: the problem type's last segment over HTTP
    (`/problems/<code>`), the frame's `code` over WebSocket.
    """

    code = "refused"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        if code is not None:
            self.code = code


class RequestInvalid(ClientError, ValueError):
    """What was sent cannot be used (a bad channel name, event type or job data, an event over
    the size limit); sending it again fails the same way."""

    code = "invalid"


class RequestForbidden(ClientError):
    """The credentials (API key or channel token) are missing, wrong, expired or do not allow
    this; `code` says which."""

    code = "forbidden"


class NotFound(ClientError):
    """The gateway does not know what was asked for (a job id, once its record has expired)."""

    code = "not-found"


class Conflict(ClientError):
    """The request clashes with the state it meets: the same idempotency key in flight, or a
    job's result asked for before it completed."""

    code = "conflict"


class RequestRateLimited(ClientError):
    """Publishing faster than the gateway's limit; `retry_after` is in seconds."""

    code = "rate-limited"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class GatewayUnavailable(ClientError, ConnectionError):
    """No answer from the gateway, or an answer that says to come back later (5xx); a request
    may be retried. Subscriptions never raise it: they reconnect on their own."""

    code = "unavailable"


class Disconnected(ClientError):
    """The gateway closed the connection and asked the client not to come back: close 4001
    (`POST /users/{sub}/disconnect`, a revoked token) or 1008 (policy: the token expired or is
    refused, the origin or host is not allowed). Every subscription of the client raises it.
    `close_code` and `reason` are the close frame's."""

    code = "disconnected"

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(
            f"the gateway closed the connection ({close_code}): {reason or 'no reason'}"
        )
        self.close_code = close_code
        self.reason = reason
