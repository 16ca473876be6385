"""Submit jobs from any Python program, as `POST /jobs` does, at the speed of Redis.

    import gateway
    job = gateway.submit("resize", {"url": "https://..."})           # job["id"], job["token"]
    answers = gateway.submit_many([{"type": "resize", "data": {...}}, ...])

With `REDIS_URL` naming Redis (or `redis_url=` given) jobs go straight into Redis: each job is
checked against its type's input as the gateway checks it (the handler modules of
`GATEWAY_HANDLERS` are imported for that), and stored, indexed, announced (`job.queued`) and
queued by the same pipeline the gateway's `POST /jobs` uses (`queue_submissions`): one round
trip for a whole `submit_many`. Without Redis (or with `memory://`) they are posted to a
running gateway (`GATEWAY_URL`, default http://127.0.0.1:8000): `POST /jobs`, and
`POST /jobs/batch` 1000 jobs a request.

The answer for a job is `POST /jobs`'s 202 body: the job resource (`id`, `status_url` links,
`channel`, ...) and, when channel tokens can be minted here (`GATEWAY_SECRET` set, or over
HTTP), the job's own `token`. `submit_many` answers each job in order with that, or with the
problem object that refused it; `submit` raises `SubmitError` (its `problem`) instead.

`idempotency_key` (an item's field in `submit_many`) shares its key space with the gateway's
`Idempotency-Key` for the same API key (`api_key=` or `GATEWAY_API_KEY`): a retry gets the
first answer again. A job with `callback_url` or `cancel_when_unwatched` takes the gateway's
async stores for its extras (one more connection for that call).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from functools import cache
from typing import Any, TypeVar

import httpx
import orjson
import redis

from gateway.api.bodies import JobBatchItem
from gateway.api.idempotency import (
    BATCH_KEY_FIELD,
    IN_FLIGHT_TTL,
    checked_key,
    item_fingerprint,
    replay,
    scoped_key,
    stored_answer,
)
from gateway.api.jobs import checked_callback, job_from_request, parsed_job_body
from gateway.auth import ChannelPolicy
from gateway.backends.redis_keys import (
    CommandList,
    idempotency_key,
    loads_script_once,
    queue_submissions,
    submission_replies,
)
from gateway.backends.redis_sync import publish_script_text, sync_redis
from gateway.backends.url import open_backend
from gateway.errors import BackendUnavailable, EventTooLarge, SubmitError
from gateway.events import now_ms
from gateway.jobs.model import JobRecord, create_jobs, submission
from gateway.jobs.registry import REGISTRY, HandlerRegistry
from gateway.problems import Problem, problem_for, unprocessable
from gateway.publish import (
    BATCH_LIMIT,
    gateway_of,
    redis_url_of,
    run_commands,
    settings_for,
)
from gateway.settings import Settings

T = TypeVar("T")


def submit(
    type: str,
    data: Any = None,
    *,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    callback_events: Sequence[str] | None = None,
    cancel_when_unwatched: float | None = None,
    redis_url: str | None = None,
    url: str | None = None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Submit one job; its `POST /jobs` answer. `SubmitError` (with the `problem`) when the
    job is refused or could not be submitted."""
    body: dict[str, Any] = {"type": type, "data": data}
    if callback_url is not None:
        body["callback_url"] = callback_url
    if callback_events is not None:
        body["callback_events"] = list(callback_events)
    if cancel_when_unwatched is not None:
        body["cancel_when_unwatched"] = cancel_when_unwatched
    direct = redis_url_of(redis_url)
    if direct is not None:
        if idempotency_key is not None:
            body[BATCH_KEY_FIELD] = idempotency_key
        answer = _submit_direct(direct, [body], api_key)[0]
    else:
        answer = _post_job(body, idempotency_key, url, api_key)
    if "id" not in answer:
        raise SubmitError(f"job refused: {answer.get('detail')}", answer)
    return answer


def submit_many(
    jobs: Iterable[Mapping[str, Any]],
    *,
    redis_url: str | None = None,
    url: str | None = None,
    api_key: str | None = None,
) -> list[dict[str, Any]]:
    """Submit many jobs (each a `POST /jobs` body, with `idempotency_key` if it has one); per
    job in order, its `POST /jobs` answer (it has an `id`) or the problem that refused it.
    `SubmitError` when Redis or the gateway could not be reached (then some may have been
    submitted: retry with idempotency keys to be sure of once)."""
    bodies = [dict(job) if isinstance(job, Mapping) else job for job in jobs]
    if not bodies:
        return []
    direct = redis_url_of(redis_url)
    if direct is not None:
        answers: list[dict[str, Any]] = []
        for start in range(0, len(bodies), BATCH_LIMIT * 10):
            answers += _submit_direct(direct, bodies[start : start + BATCH_LIMIT * 10], api_key)
        return answers
    return _post_batches(bodies, url, api_key)


@cache
def _registry(handlers: tuple[str, ...]) -> HandlerRegistry:
    REGISTRY.load_modules(handlers)
    return REGISTRY


_policies: dict[int, tuple[Settings, ChannelPolicy | None]] = {}


def _policy(settings: Settings) -> ChannelPolicy | None:
    """Mints job tokens the gateways accept: only with a configured `GATEWAY_SECRET`. One per
    settings object (`settings_for` keeps one while the environment stays the same)."""
    held = _policies.get(id(settings))
    if held is None or held[0] is not settings:
        if len(_policies) > 16:
            _policies.clear()
        policy = ChannelPolicy.from_settings(settings) if settings.secrets else None
        held = _policies[id(settings)] = (settings, policy)
    return held[1]


def _answer(settings: Settings, record: JobRecord) -> dict[str, Any]:
    resource = record.resource()
    policy = _policy(settings)
    if policy is not None:
        resource["token"] = policy.job_token(record.id, settings.token_ttl)
    return resource


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end from blocking code, even under a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _submit_direct(redis_url: str, bodies: list[Any], api_key: str | None) -> list[dict[str, Any]]:
    settings = settings_for(redis_url)
    registry = _registry(settings.handlers)
    answers: list[dict[str, Any] | None] = [None] * len(bodies)
    chosen: list[tuple[int, JobRecord, float | None]] = []
    claims: dict[int, tuple[str, str]] = {}
    for index, body in enumerate(bodies):
        try:
            if not isinstance(body, dict):
                raise unprocessable(
                    "each job is an object, as POST /jobs takes",
                    errors=[{"loc": f"jobs.{index}", "msg": "must be an object"}],
                )
            request = parsed_job_body(registry, JobBatchItem, body)
            record = job_from_request(registry, request)
            if record.callback_url:
                _run(checked_callback(record.callback_url, settings))
            if request.idempotency_key is not None:
                key = checked_key(request.idempotency_key, BATCH_KEY_FIELD)
                claims[index] = (scoped_key(key, api_key), item_fingerprint(body))
        except Problem as problem:
            answers[index] = problem.body()
            continue
        chosen.append((index, record, request.cancel_when_unwatched))
    client = sync_redis(redis_url)
    try:
        if claims:
            replayed = _claim(client, settings, claims)
            for index, answer in replayed.items():
                answers[index] = answer
            chosen = [item for item in chosen if item[0] not in replayed]
        plain = [item for item in chosen if not (item[1].callback_url or item[2] is not None)]
        extras = [item for item in chosen if item[1].callback_url or item[2] is not None]
        if plain:
            created = now_ms()
            jobs = [submission(record, created) for _index, record, _unwatched in plain]
            load = loads_script_once(redis_url, len(jobs))
            script = publish_script_text(redis_url)
            recorded = CommandList()
            queue_submissions(recorded, settings, jobs, publish_lua=script, load_script=load)
            replies = run_commands(redis_url, recorded.commands)
            if replies is None:  # a Cluster client: its pipeline routes each command
                pipe = client.pipeline(transaction=False)
                queue_submissions(pipe, settings, jobs, publish_lua=script, load_script=load)
                replies = pipe.execute()
            failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if failed is not None:
                raise failed
            for (_index, record, _unwatched), entry_id in zip(
                plain, submission_replies(replies, len(jobs), load_script=load), strict=True
            ):
                record.last_event_id = entry_id.decode()
        if extras:
            _run(_create_with_extras(settings, extras))
    except (redis.RedisError, BackendUnavailable, EventTooLarge) as exc:
        _release(client, [claims[index][0] for index, *_rest in chosen if index in claims])
        failure = problem_for(
            exc if not isinstance(exc, redis.RedisError) else BackendUnavailable(str(exc))
        )
        raise SubmitError(f"submit via {redis_url}: {exc}", failure.body()) from exc
    for index, record, _unwatched in chosen:
        answers[index] = _answer(settings, record)
    if claims:
        _finish(client, settings, claims, answers)
    return [answer if answer is not None else {} for answer in answers]


async def _create_with_extras(
    settings: Settings, chosen: list[tuple[int, JobRecord, float | None]]
) -> None:
    """Jobs with a callback (its webhook schedule) or `cancel_when_unwatched` (the presence
    store's watch list): through the gateway's own async stores, as `POST /jobs` does."""
    backend = open_backend(settings)
    try:
        await create_jobs(backend, [record for _index, record, _unwatched in chosen])
        for _index, record, unwatched in chosen:
            if unwatched is not None:
                await backend.presence.watch_job(record.id, unwatched, now_ms() / 1000)
    finally:
        await backend.release()


def _claim(
    client: Any, settings: Settings, claims: dict[int, tuple[str, str]]
) -> dict[int, dict[str, Any]]:
    """Claim every key (`SET NX`, one round trip); for keys already claimed, the stored answer
    (or the problem: another job, or still in flight). Their items are not submitted again."""
    ttl = min(IN_FLIGHT_TTL, settings.idempotency_ttl)
    pipe = client.pipeline(transaction=False)
    for key, fingerprint in claims.values():
        claim = orjson.dumps({"fingerprint": fingerprint, "state": "processing"})
        pipe.set(idempotency_key(key), claim, nx=True, ex=ttl)
    taken = pipe.execute()
    held = [index for index, won in zip(claims, taken, strict=True) if not won]
    if not held:
        return {}
    pipe = client.pipeline(transaction=False)
    for index in held:
        pipe.get(idempotency_key(claims[index][0]))
    stored = pipe.execute()
    replayed: dict[int, dict[str, Any]] = {}
    for index, raw in zip(held, stored, strict=True):
        fingerprint = claims.pop(index)[1]
        if raw is None:  # released between the two calls: tell the caller to retry
            raw = orjson.dumps({"fingerprint": fingerprint, "state": "processing"})
        try:
            replayed[index] = orjson.loads(replay(orjson.loads(raw), fingerprint).body)
        except Problem as problem:
            replayed[index] = problem.body()
    return replayed


def _finish(
    client: Any,
    settings: Settings,
    claims: dict[int, tuple[str, str]],
    answers: list[dict[str, Any] | None],
) -> None:
    """Store each claimed job's answer as `POST /jobs` stores its response; release the rest."""
    pipe = client.pipeline(transaction=False)
    for index, (key, fingerprint) in claims.items():
        answer = answers[index]
        if answer is None or "id" not in answer:
            pipe.delete(idempotency_key(key))
            continue
        pipe.set(
            idempotency_key(key), stored_answer(fingerprint, answer), ex=settings.idempotency_ttl
        )
    pipe.execute()


def _release(client: Any, keys: list[str]) -> None:
    if keys:
        # Failing that, the in-flight claim expires after IN_FLIGHT_TTL anyway.
        with contextlib.suppress(redis.RedisError):
            client.delete(*(idempotency_key(key) for key in keys))


def _post_job(
    body: dict[str, Any], key: str | None, url: str | None, api_key: str | None
) -> dict[str, Any]:
    base, headers = gateway_of(url, api_key)
    if key is not None:
        headers["Idempotency-Key"] = key
    try:
        response = httpx.post(f"{base}/jobs", json=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise SubmitError(f"submit via {base}: {exc}") from exc
    return _json_answer(response, base)


def _post_batches(bodies: list[Any], url: str | None, api_key: str | None) -> list[dict[str, Any]]:
    base, headers = gateway_of(url, api_key)
    answers: list[dict[str, Any]] = []
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for start in range(0, len(bodies), BATCH_LIMIT):
            chunk = bodies[start : start + BATCH_LIMIT]
            try:
                response = client.post("/jobs/batch", json={"jobs": chunk})
            except httpx.HTTPError as exc:
                raise SubmitError(f"submit {len(chunk)} jobs via {base}: {exc}") from exc
            if response.status_code != 202:
                answer = _json_answer(response, base)
                raise SubmitError(f"submit via {base}: {answer.get('detail')}", answer)
            answers += response.json()["jobs"]
    return answers


def _json_answer(response: httpx.Response, base: str) -> dict[str, Any]:
    try:
        answer: Any = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise SubmitError(f"submit via {base}: {response.status_code} {response.text[:200]}")
    if response.status_code >= 500:
        raise SubmitError(f"submit via {base}: {answer.get('detail')}", answer)
    return answer
