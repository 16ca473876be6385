"""Redis key names, the Lua scripts, and the publish script's call: shared by the async backend
and the sync publisher (`gateway.publish`), so both write exactly the same entries.

Every key of a channel shares the channel's hash tag (`gw:{room:lobby}:log`), so a Redis
Cluster keeps each channel's keys on one shard.
"""

from __future__ import annotations

import zlib
from importlib import resources
from typing import Any

from gateway.backends.bus import JobUpdate, check_event_size
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


def _bridge_publish_script() -> str:
    """bridge_publish.lua with publish.lua in front of it as a local function: one text of
    the publish logic, so bridged events are stored exactly like published ones (the normal
    publish path keeps its own script, unchanged)."""
    body = resources.files("gateway.backends").joinpath("publish.lua").read_text()
    tail = resources.files("gateway.backends").joinpath("bridge_publish.lua").read_text()
    return f"{LUA_PRELUDE}local function publish(KEYS, ARGV)\n{body}\nend\n{tail}"


BRIDGE_PUBLISH_LUA = _bridge_publish_script()


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


def event_from_entry(channel: str, entry_id: bytes, tail: bytes) -> Event:
    event_id = entry_id.decode()
    type_ = _type_from_tail(tail)
    return Event(splice_envelope(event_id, tail), id=event_id, channel=channel, type=type_)


def _type_from_tail(tail: bytes) -> str:
    """Read `type` from an envelope tail without decoding the whole event."""
    start = tail.index(b'"type":"') + 8
    return tail[start : tail.index(b'"', start)].decode()


def published(channel: str, type_: str, tail: bytes, entry_id: bytes | None) -> Event | None:
    """The event the publish script's answer stands for (None: refused, the job had ended)."""
    if entry_id is None:
        return None
    event_id = entry_id.decode()
    METRICS.events_published.labels(namespace_of(channel)).inc()
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
