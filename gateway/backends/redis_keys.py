"""Redis key names, the Lua scripts, and the publish script's call: shared by the async backend
and the sync publisher (`gateway.publish`), so both write exactly the same entries.

Every key of a channel shares the channel's hash tag (`gw:{room:lobby}:log`), so a Redis
Cluster keeps each channel's keys on one shard.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from importlib import resources
from itertools import chain
from typing import Any

from gateway.backends.bus import JobUpdate, NewJob, check_event_size
from gateway.events import Event, envelope_tail, namespace_of, splice_envelope
from gateway.metrics import METRICS
from gateway.settings import Settings
from gateway.vocabulary import JOB_TERMINAL_STATUSES

JOB_STREAM = "gw:{jobs}"
DELAYED_JOBS = "gw:{jobs}:delayed"
WORKER_GROUP = "workers"
JOB_INDEX = "gw:{jobs}:index"
WEBHOOK_SCHEDULE = "gw:{webhooks}:due"
WEBHOOK_PAYLOADS = "gw:{webhooks}:payloads"


def queue_keys(partition: int) -> tuple[str, str]:
    """One queue partition's stream and delayed set. Both share the partition's hash tag (one
    slot: a script or MULTI may touch them together); partitions differ, so a Cluster spreads
    them over its shards. Partition 0 keeps the names a one-stream queue always had."""
    if partition == 0:
        return JOB_STREAM, DELAYED_JOBS
    return f"gw:{{jobs:{partition}}}", f"gw:{{jobs:{partition}}}:delayed"


def queue_partition(job_id: str, partitions: int) -> int:
    """The partition a job is queued on: a stable hash of its id, the same in every process."""
    return zlib.crc32(job_id.encode()) % partitions if partitions > 1 else 0


def stream_key(channel: str) -> str:
    return f"gw:{{{channel}}}:log"


def bus_channel(channel: str) -> str:
    return f"gw:{{{channel}}}"


def job_key(job_id: str) -> str:
    """The job record shares its channel's hash tag, so state and event change in one script."""
    return f"gw:{{job:{job_id}}}:job"


def idempotency_key(key: str) -> str:
    return f"gw:idem:{key}"


def bridged_key(channel: str, source: str, message_id: str) -> str:
    """A bridged message's dedup key: in its channel's hash slot, so the check and the publish
    are one script on one shard."""
    return f"gw:{{{channel}}}:bridged:{source}:{message_id}"


_TERMINAL_TABLE = ", ".join(
    f"[{status.value!r}] = true" for status in sorted(JOB_TERMINAL_STATUSES)
)


def lua_prelude(publish_command: str = "PUBLISH") -> str:
    """What the scripts share with Python, defined in front of each (sorted: one script text,
    one SHA, in every process). `PUBLISH_COMMAND` is how publish.lua delivers live: `PUBLISH`
    on one Redis, `SPUBLISH` (sharded pub/sub, on the channel's own slot) on a Cluster."""
    return (
        f"local JOB_TERMINAL_STATUSES = {{{_TERMINAL_TABLE}}}\n"
        f"local PUBLISH_COMMAND = {publish_command!r}\n"
    )


LUA_PRELUDE = lua_prelude()


def load_script(name: str, publish_command: str = "PUBLISH") -> str:
    return (
        lua_prelude(publish_command)
        + resources.files("gateway.backends").joinpath(name).read_text()
    )


PUBLISH_LUA = load_script("publish.lua")
SHARDED_PUBLISH_LUA = load_script("publish.lua", "SPUBLISH")
"""publish.lua for a Redis Cluster: the same file, live delivery by `SPUBLISH`."""
PROMOTE_LUA = load_script("promote.lua")
BEGIN_ATTEMPT_LUA = load_script("begin_attempt.lua")
CLAIM_WEBHOOKS_LUA = load_script("claim_webhooks.lua")


def _after_publish(name: str, publish_command: str = "PUBLISH") -> str:
    """The script `name` with publish.lua in front of it as a local function `publish`: one
    text of the publish logic, so the events it publishes are stored exactly like published
    ones (the normal publish path keeps its own script, unchanged)."""
    body = resources.files("gateway.backends").joinpath("publish.lua").read_text()
    tail = resources.files("gateway.backends").joinpath(name).read_text()
    prelude = lua_prelude(publish_command)
    return f"{prelude}local function publish(KEYS, ARGV)\n{body}\nend\n{tail}"


BRIDGE_PUBLISH_LUA = _after_publish("bridge_publish.lua")
SHARDED_BRIDGE_PUBLISH_LUA = _after_publish("bridge_publish.lua", "SPUBLISH")
"""bridge_publish.lua for a Redis Cluster: the event delivered live by `SPUBLISH`."""
START_JOB_LUA = _after_publish("start_job.lua")
SHARDED_START_JOB_LUA = _after_publish("start_job.lua", "SPUBLISH")
"""start_job.lua for a Redis Cluster: `job.started` delivered live by `SPUBLISH`."""


def publish_call(
    settings: Settings,
    channel: str,
    type_: str,
    data: Any,
    source: str | None,
    job: JobUpdate | None,
) -> tuple[list[str], list[Any], bytes]:
    """KEYS and ARGV for publish.lua, shared by the async bus and the sync publisher.

    Raises `EventTooLarge` for an event over the channel's size limit.
    """
    retention = settings.retention_for(channel)
    tail = envelope_tail(channel, type_, data, source)
    check_event_size(settings, channel, tail)
    keys = [stream_key(channel)]
    args: list[Any] = [
        bus_channel(channel),
        tail,
        retention.size,
        retention.ttl,
        retention.max_bytes,
    ]
    if job is not None:
        keys.append(job_key(job.job_id))
        args.append(job.expire)
        for name, value in job.fields.items():
            args.extend((name, value))
    return keys, args, tail


_SCRIPT_SOURCES = {
    text: (text.encode(), hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest())
    for text in (PUBLISH_LUA, SHARDED_PUBLISH_LUA)
}
"""publish.lua's texts as sent with `EVAL` in pipelines, and their SHAs (encoded and hashed
once, not per call)."""
PUBLISH_SHA = _SCRIPT_SOURCES[PUBLISH_LUA][1]


class CommandList:
    """Commands recorded with the pipeline calls `queue_submissions` makes (`hset`, `zadd`,
    `execute_command`), to send as one packed pipeline (`gateway.publish.run_commands`, the
    server's auto-pipeline)."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def hset(self, name: str, *, mapping: Mapping[str, Any]) -> None:
        self.commands.append(("HSET", name, *chain.from_iterable(mapping.items())))

    def zadd(self, name: str, mapping: Mapping[str, int]) -> None:
        scored = (x for member, score in mapping.items() for x in (score, member))
        self.commands.append(("ZADD", name, *scored))

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)


def queue_submissions(
    pipe: Any,
    settings: Settings,
    jobs: Sequence[NewJob],
    *,
    publish_lua: str = PUBLISH_LUA,
    load_script: bool = False,
    script_preloaded: bool = False,
) -> list[bytes]:
    """Queue the submission of `jobs` on `pipe`, a non-transactional pipeline (the blocking
    client's or the async one's: queuing is the same call on both), and return each job's
    event tail (for `published`). The async bus and `gateway.submit` both use this, so a job
    is stored the same way whichever way it came in.

    Order: every record (`HSET`), the index entries (one `ZADD`), then for each job its first
    event (publish.lua on the job's channel and record: one slot, atomic) and right after it
    `XADD job <id>` on the job's queue partition, so a worker never sees a job before its
    `job.queued`. A bare `EVALSHA` could meet a server that lost its scripts while the `XADD`
    after it still ran, so the script goes with its source: by `EVAL` for each job, or with
    `load_script` (a batch on one Redis server) by one `SCRIPT LOAD` in front and `EVALSHA`
    after it (Redis hashes a script's source on every `EVAL`: ~40 % of a publish's Redis
    time). `publish_lua`: the publish script's text as the backend runs it (`SPUBLISH` on a
    Cluster). `script_preloaded`: the caller sends the `SCRIPT LOAD` in front itself (the
    server's auto-pipeline, once per batch of requests), so `EVALSHA` and no `SCRIPT LOAD`
    here. The event replies are at `submission_replies`. Raises `EventTooLarge` before
    queuing anything.
    """
    calls = [
        publish_call(
            settings,
            job.event.channel,
            job.event.type,
            job.event.data,
            job.event.source,
            job.update,
        )
        for job in jobs
    ]
    partitions = settings.queue_partitions
    source, sha = _SCRIPT_SOURCES[publish_lua]
    if load_script or script_preloaded:
        if not script_preloaded:
            pipe.execute_command("SCRIPT", "LOAD", source)
        script: tuple[Any, ...] = ("EVALSHA", sha)
    else:
        script = ("EVAL", source)
    for job in jobs:
        mapping: Any = job.fields
        pipe.hset(job_key(job.job_id), mapping=mapping)
    index: Any = {job.job_id: job.created_ms for job in jobs}
    pipe.zadd(JOB_INDEX, index)
    for job, (keys, args, _tail) in zip(jobs, calls, strict=True):
        pipe.execute_command(*script, len(keys), *keys, *args)
        pipe.execute_command(
            "XADD", queue_keys(queue_partition(job.job_id, partitions))[0], "*", "job", job.job_id
        )
    return [tail for _keys, _args, tail in calls]


def loads_script_once(redis_url: str, count: int) -> bool:
    """Whether `queue_submissions` may send the script once for `count` jobs: a batch, on a
    single Redis server (in a Cluster, a `SCRIPT LOAD` in a pipeline reaches one node)."""
    return count > 1 and "+cluster" not in redis_url.partition("://")[0].lower()


def submission_replies(
    replies: Sequence[Any], count: int, *, load_script: bool = False
) -> list[Any]:
    """The event ids among the replies of a pipeline `queue_submissions` filled for `count`
    jobs (nothing else queued before it)."""
    first = count + 1 + (1 if load_script else 0)
    return [replies[first + 2 * i] for i in range(count)]


def event_from_entry(channel: str, entry_id: bytes, tail: bytes) -> Event:
    event_id = entry_id.decode()
    type_ = _type_from_tail(tail)
    return Event(splice_envelope(event_id, tail), id=event_id, channel=channel, type=type_)


def _type_from_tail(tail: bytes) -> str:
    """Read `type` from an envelope tail without decoding the whole event."""
    start = tail.index(b'"type":"') + 8
    return tail[start : tail.index(b'"', start)].decode()


_published_counters: dict[str, Any] = {}
"""`events_published` by namespace: a label lookup takes longer than the count."""


def published(channel: str, type_: str, tail: bytes, entry_id: bytes | None) -> Event | None:
    """The event the publish script's answer stands for (None: refused, the job had ended)."""
    if entry_id is None:
        return None
    event_id = entry_id.decode()
    namespace = namespace_of(channel)
    counter = _published_counters.get(namespace)
    if counter is None:
        counter = _published_counters[namespace] = METRICS.events_published.labels(namespace)
    counter.inc()
    return Event(splice_envelope(event_id, tail), id=event_id, channel=channel, type=type_)


PRESENCE_GATEWAYS = "gw:{presence}:gateways"
"""Sorted set: gateway process id -> the unix ms its heartbeat lasts until."""
UNWATCHED_GRACES = "gw:{presence}:unwatched:grace"
"""Hash: job id -> `cancel_when_unwatched` seconds, for jobs that opted in."""
UNWATCHED_DUE = "gw:{presence}:unwatched:due"
"""Sorted set: job id -> unix ms after which the unwatched job is cancelled."""


def presence_keys(channel: str) -> list[str]:
    """A channel's entries, their key index and its per-user counts: one hash tag, one slot."""
    base = f"gw:{{{channel}}}:presence"
    return [base, base + ":index", base + ":users"]


def presence_held_key(gateway: str) -> str:
    """Set of `channel \\n key` a gateway process holds (what to remove when it dies)."""
    return f"gw:{{presence:{gateway}}}:held"


PRESENCE_JOIN_LUA = load_script("presence_join.lua")
PRESENCE_LEAVE_LUA = load_script("presence_leave.lua")
CLAIM_DUE_LUA = load_script("claim_due.lua")
JOB_WATCHED_LUA = load_script("job_watched.lua")
