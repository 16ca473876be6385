"""`Idempotency-Key` (IETF draft-ietf-httpapi-idempotency-key-header) for job submission.

The first request with a key claims it in the backend (Redis `SET NX`, so every gateway process
sees the claim) and stores its response when done; a retry with the same key and the same body
gets that response again, a retry with another body gets `422`, and a retry while the first is
still being processed gets `409`. A claim whose request died is released after
`IN_FLIGHT_TTL` seconds, so a crashed gateway does not lock a key for a day.

Keys are kept per caller (`key_owner`): a replay carries the job's own token, which grants its
events, so another caller who reuses a key and body must not get it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from gateway.api.guards import caller_of
from gateway.api.requests import header_map
from gateway.auth import token_of
from gateway.backends.bundle import Backend
from gateway.errors import BackendUnavailable
from gateway.problems import Problem, bad_request
from gateway.services import Services, services_of

IN_FLIGHT_TTL = 60
"""Seconds a claimed key stays claimed without a stored response."""

REPLAYED_HEADERS = ("location", "content-type")


def idempotency_key_of(request: Request) -> str | None:
    key = header_map(request.scope).get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if key.startswith('"') and key.endswith('"') and len(key) >= 2:
        key = key[1:-1]  # the draft defines the header as a Structured Field string
    return checked_key(key, "Idempotency-Key")


def checked_key(key: str, what: str) -> str:
    if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise bad_request(f"{what} must be 1-255 printable ASCII characters")
    return key


def scoped_key(key: str, api_key: str | None) -> str:
    """One client's key never answers with another client's response."""
    return owned_key(key, api_key_owner(api_key) if api_key else None)


def owned_key(key: str, owner: str | None) -> str:
    return f"{owner}:{key}" if owner else key


def api_key_owner(api_key: str) -> str:
    """An API key's fingerprint (never the key itself in a Redis key name)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def key_owner(scope: Scope, services: Services) -> str | None:
    """Whose key space a request's idempotency keys are in: its API key's fingerprint; without
    one (no `GATEWAY_API_KEYS`), the subject of the channel token it carries, keyed with the
    token secret so that no anonymous caller can spell the same stored key; else None (keys
    shared by every anonymous caller). A token that does not verify is refused (`Forbidden`)
    rather than quietly moving the caller to the anonymous key space."""
    api_key = caller_of(scope).api_key
    if api_key:
        return api_key_owner(api_key)
    token = services.channels.token(token_of(scope), api_key=None)
    if token is None or not token.sub or not services.settings.secrets:
        return None
    mac = hmac.new(services.settings.secrets[0].encode(), digestmod=hashlib.sha256)
    mac.update(b"idempotency-key owner\0" + token.sub.encode())
    return "sub-" + mac.hexdigest()[:16]


async def idempotent(
    request: Request,
    produce: Callable[[], Awaitable[Response]],
    fingerprint_of: Callable[[], str] | None = None,
) -> Response:
    """Run `produce` once per key and body; answer retries from the stored response.

    `fingerprint_of()` stands for the request when given (`POST /jobs`: its job, as
    `item_fingerprint` sees it, so the same key in a batch item matches); else the method,
    path and body bytes do."""
    key = idempotency_key_of(request)
    if key is None:
        return await produce()
    services = services_of(request)
    backend = services.backend
    key = owned_key(key, key_owner(request.scope, services))
    if fingerprint_of is not None:
        fingerprint = fingerprint_of()
    else:
        body = await request.body()
        fingerprint = hashlib.sha256(
            request.method.encode() + b" " + request.url.path.encode() + b"\n" + body
        ).hexdigest()
    claim = orjson.dumps({"fingerprint": fingerprint, "state": "processing"})
    ttl = services.settings.idempotency_ttl
    stored = await backend.idempotency.begin(key, claim, min(IN_FLIGHT_TTL, ttl))
    if stored is not None:
        return replay(orjson.loads(stored), fingerprint)
    try:
        response = await produce()
    except BaseException:
        with contextlib.suppress(BackendUnavailable):
            await backend.idempotency.abandon(key)
        raise
    if response.status_code >= 400:
        await backend.idempotency.abandon(key)
        return response
    record = {
        "fingerprint": fingerprint,
        "state": "done",
        "status": response.status_code,
        "headers": {k: v for k, v in response.headers.items() if k in REPLAYED_HEADERS},
        "body": base64.b64encode(bytes(response.body)).decode(),
    }
    await backend.idempotency.finish(key, orjson.dumps(record), ttl)
    return response


def replay(stored: dict[str, Any], fingerprint: str) -> Response:
    if stored.get("fingerprint") != fingerprint:
        raise Problem(
            422,
            "Unprocessable Content",
            "this Idempotency-Key was already used with a different request body",
            code="idempotency-key-reused",
        )
    if stored.get("state") != "done":
        raise Problem(
            409,
            "Conflict",
            "a request with this Idempotency-Key is still being processed; retry shortly",
            code="idempotency-key-in-flight",
            headers={"Retry-After": "1"},
        )
    return Response(
        base64.b64decode(stored["body"]),
        status_code=int(stored["status"]),
        headers={**stored["headers"], "Idempotent-Replayed": "true"},
    )


BATCH_KEY_FIELD = "idempotency_key"
"""An item of `POST /jobs/batch` names its key here (the header names one for the request)."""


def item_fingerprint(item: Mapping[str, Any]) -> str:
    """A batch item's fingerprint: its job body under `POST /jobs`, keys sorted, without its
    `idempotency_key` (so the same job in another batch, or from `gateway.submit`, matches)."""
    job = {name: value for name, value in item.items() if name != BATCH_KEY_FIELD}
    return hashlib.sha256(
        b"POST /jobs\n" + orjson.dumps(job, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def stored_answer(fingerprint: str, answer: Mapping[str, Any]) -> bytes:
    """What a key keeps for a job accepted in a batch: the response `POST /jobs` would have
    given (so a retry through either route replays it)."""
    record = {
        "fingerprint": fingerprint,
        "state": "done",
        "status": 202,
        "headers": {"location": f"/jobs/{answer['id']}", "content-type": "application/json"},
        "body": base64.b64encode(orjson.dumps(answer)).decode(),
    }
    return orjson.dumps(record)


class BatchClaims:
    """The idempotency keys of a batch's items, in the same store and key space as the
    `Idempotency-Key` header of `POST /jobs`: claimed as each item is read, stored with the
    item's answer once the batch is done, released for an item that was refused.

    An item's fingerprint is its job body (keys sorted, `idempotency_key` left out) under
    `POST /jobs`: a retry of the same job in another batch replays its answer; the same key
    with another job is refused (422), as is one whose first job is still being submitted (409).
    """

    def __init__(self, services: Services, scope: Scope) -> None:
        self.backend: Backend = services.backend
        self.ttl = services.settings.idempotency_ttl
        self._services = services
        self._scope = scope
        self._owner: tuple[str | None] | None = None
        """`key_owner`, found out with the first item that names a key."""
        self._claimed: dict[int, tuple[str, str]] = {}

    def _owned(self, key: str) -> str:
        if self._owner is None:
            self._owner = (key_owner(self._scope, self._services),)
        return owned_key(key, self._owner[0])

    async def claim(self, index: int, item: Mapping[str, Any]) -> dict[str, Any] | None:
        """Claim the item's key, if it names one; the stored answer when it was used before
        for this job (a `Problem` when for another, or still in flight)."""
        raw = item.get(BATCH_KEY_FIELD)
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise bad_request(f"{BATCH_KEY_FIELD} must be a string")
        key = self._owned(checked_key(raw, BATCH_KEY_FIELD))
        fingerprint = item_fingerprint(item)
        claim = orjson.dumps({"fingerprint": fingerprint, "state": "processing"})
        stored = await self.backend.idempotency.begin(key, claim, min(IN_FLIGHT_TTL, self.ttl))
        if stored is not None:
            response = replay(orjson.loads(stored), fingerprint)
            answer: dict[str, Any] = orjson.loads(response.body)
            return answer
        self._claimed[index] = (key, fingerprint)
        return None

    async def abandon(self, index: int) -> None:
        claimed = self._claimed.pop(index, None)
        if claimed is not None:
            with contextlib.suppress(BackendUnavailable):
                await self.backend.idempotency.abandon(claimed[0])

    async def abandon_all(self) -> None:
        await asyncio.gather(*(self.abandon(index) for index in list(self._claimed)))

    async def finish(self, answers: list[dict[str, Any] | None]) -> None:
        """Store each claimed item's answer (as `POST /jobs` would have answered it)."""
        waits = []
        for index, (key, fingerprint) in self._claimed.items():
            answer = answers[index]
            if answer is None or "id" not in answer:
                waits.append(self.backend.idempotency.abandon(key))
                continue
            waits.append(
                self.backend.idempotency.finish(key, stored_answer(fingerprint, answer), self.ttl)
            )
        self._claimed.clear()
        await asyncio.gather(*waits)
