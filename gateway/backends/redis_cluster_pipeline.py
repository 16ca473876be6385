"""Non-transactional pipelines on a Redis Cluster, routed here instead of by redis-py's
`ClusterPipeline`: each command's hash slot from its keys (redis-py's `key_slot` and the
cluster's command table), the slot's master from the client's slot map, then one plain
pipeline per master, all masters at once.

Why not `ClusterPipeline`: it looks each script call's keys up with `COMMAND GETKEYS`, one
round trip per command awaited in turn (a batch of 100 `EVALSHA` was 100 round trips before
anything was sent), and after a connection error it sends the whole batch again, so a script
that had run ran twice. Here:

- a `MOVED` reply updates that slot in the map and sends the command again to its new master;
  `ASK` sends it once to the importing node after `ASKING`; `TRYAGAIN` and `CLUSTERDOWN` wait
  a moment (and re-read the map) and send again. These replies mean the command did not run;
- a node that cannot be connected to (nothing was sent) re-reads the map and is retried;
- a connection lost after a batch was written leaves its commands without a reply as
  `OutcomeUnknown` in their places: they may have run, so they are never sent again.

Replies come back in the order of the commands, an error reply as its exception in its place
(like `execute(raise_on_error=False)`). `cluster_slot` says which commands can be routed:
the rest (no key, keys in several slots, keys where the command table does not place them)
go through redis-py's own pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import hiredis
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import GatewayError

ROUTE_ATTEMPTS = 4
"""Sends of one command at most: a redirect or an unreachable node is followed this often."""

RETRY_PAUSE = 0.05
"""Seconds before sending again after `TRYAGAIN`, `CLUSTERDOWN` or an unreachable node."""

SCRIPT_CALLS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
STREAM_READS = frozenset({"xread", "xreadgroup"})

LOST = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


class OutcomeUnknown(GatewayError, RedisConnectionError):
    """The connection was lost after the command was sent and before its reply came: it may
    have run. Never sent again by the pipeline (a script must not run twice)."""


class NotSent(GatewayError):
    """No connection to the node could be made: nothing of the batch was sent."""


def _name(arg: Any) -> str:
    return (arg.decode() if isinstance(arg, bytes) else str(arg)).lower()


def _as_bytes(key: Any) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, memoryview):
        return key.tobytes()
    return str(key).encode()


def stream_keys(args: Sequence[Any]) -> Sequence[Any]:
    """The keys of `XREAD`/`XREADGROUP`: the first half of what follows `STREAMS` (redis-py
    asks the server with `COMMAND GETKEYS`, a round trip per read, since their keys move)."""
    for index in range(1, len(args)):
        if _name(args[index]) == "streams":
            rest = args[index + 1 :]
            return rest[: len(rest) // 2]
    return ()


def command_keys(args: Sequence[Any], table: Mapping[str, Any]) -> Sequence[Any] | None:
    """The keys of the command `args`, or None when this cannot tell without asking the server
    (`table` is redis-py's copy of the server's `COMMAND` reply)."""
    name = _name(args[0])
    if name in SCRIPT_CALLS:
        count = int(args[2]) if len(args) > 2 else 0
        return args[3 : 3 + count]
    if name in STREAM_READS:
        return stream_keys(args)
    info = table.get(name)
    if not isinstance(info, Mapping) or "movablekeys" in info.get("flags", ()):
        return None
    first, last, step = info["first_key_pos"], info["last_key_pos"], info["step_count"]
    if first != 1 or step < 1:
        return None
    if last < 0:
        last = len(args) + last
    return args[first : last + 1 : step]


def cluster_slot(args: Sequence[Any], table: Mapping[str, Any]) -> int | None:
    """The one hash slot the command touches; None when it has no keys, keys in several slots,
    or keys this cannot place."""
    keys = command_keys(args, table)
    if not keys:
        return None
    slot = int(key_slot(_as_bytes(keys[0])))
    for key in keys[1:]:
        if key_slot(_as_bytes(key)) != slot:
            return None
    return slot


def packed(commands: Iterable[Sequence[Any]], asking: bool) -> bytes:
    """The commands in Redis's wire format in one buffer (hiredis packs in C), each after an
    `ASKING` when they go to a node importing their slot."""
    prefix = hiredis.pack_command(("ASKING",)) if asking else b""
    return b"".join(prefix + hiredis.pack_command(tuple(command)) for command in commands)


class Routing:
    """The bookkeeping of one routed pipeline, shared by the async and the blocking sender:
    which commands still need sending, where, and what the replies so far are."""

    def __init__(self, slots: Sequence[int]) -> None:
        self.slots = slots
        self.replies: list[Any] = [None] * len(slots)
        self.todo = list(range(len(slots)))
        self.asking: dict[int, tuple[str, int]] = {}
        """Command index -> the node (`ASK`) to send it to once, after `ASKING`."""
        self.moved: list[MovedError] = []
        self.refresh = False
        """Re-read the whole slot map before the next round (an unreachable node, CLUSTERDOWN)."""
        self.pause = False

    def groups(
        self, master_of: Callable[[int], Any], node_at: Callable[[str, int], Any]
    ) -> list[tuple[Any, bool, list[int]]]:
        """This round's batches: (node, after ASKING, command indices), one per node and kind."""
        batches: dict[tuple[str, bool], tuple[Any, bool, list[int]]] = {}
        uncovered: list[int] = []
        for index in self.todo:
            address = self.asking.get(index)
            node = node_at(*address) if address is not None else None
            asked = node is not None
            if node is None:
                try:
                    node = master_of(self.slots[index])
                except RedisClusterException as exc:  # the slot has no master in the map
                    self.replies[index] = exc
                    uncovered.append(index)
                    continue
            batches.setdefault((node.name, asked), (node, asked, []))[2].append(index)
        self.asking = {}
        self.todo = uncovered
        if uncovered:
            self.refresh = self.pause = True
        return list(batches.values())

    def settle(self, indices: list[int], replies: Sequence[Any] | NotSent) -> None:
        """Take one batch's replies: keep the answers, queue the redirected ones again."""
        if isinstance(replies, NotSent):
            for index in indices:
                self.replies[index] = RedisConnectionError(str(replies))
            self.todo.extend(indices)
            self.refresh = self.pause = True
            return
        for index, reply in zip(indices, replies, strict=True):
            self.replies[index] = reply
            if isinstance(reply, MovedError):
                self.moved.append(reply)
            elif isinstance(reply, AskError):
                self.asking[index] = (reply.host, int(reply.port))
            elif isinstance(reply, TryAgainError):
                self.pause = True
            elif isinstance(reply, ClusterDownError):
                self.refresh = self.pause = True
            else:
                continue
            self.todo.append(index)

    def next_round(self) -> None:
        self.moved = []
        self.refresh = self.pause = False
        self.todo.sort()


# --- asyncio ---------------------------------------------------------------------------------


async def _send_async(node: Any, asking: bool, commands: list[Any]) -> list[Any] | NotSent:
    """One batch on one connection of `node` (a `redis.asyncio.cluster.ClusterNode`): written
    at once, replies parsed by the node (its response callbacks, `NEVER_DECODE`)."""
    connection = node.acquire_connection()
    replies: list[Any] = []
    try:
        try:
            reader = getattr(connection, "_reader", None)
            if reader is not None and reader.at_eof():  # closed by the server (a restart)
                await connection.disconnect()
            await connection.connect()
        except LOST as exc:
            return NotSent(f"{node.name}: {exc}")
        await connection.send_packed_command(
            packed((command.args for command in commands), asking), check_health=False
        )
        for command in commands:
            if asking:
                with contextlib.suppress(ResponseError):  # its command's reply says why
                    await connection.read_response()
            try:
                reply = await node.parse_response(connection, command.args[0], **command.kwargs)
                replies.append(reply)
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except LOST as exc:
        await connection.disconnect()
        unknown = OutcomeUnknown(f"{node.name}: connection lost before the reply: {exc}")
        return replies + [unknown] * (len(commands) - len(replies))
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        node.release(connection)


async def execute_routed(client: Any, commands: Sequence[Any]) -> list[Any] | None:
    """Run `commands` (redis-py `PipelineCommand`s: `.args`, `.kwargs`) on the cluster `client`
    (`redis.asyncio.RedisCluster`), one pipeline per master; None, having sent nothing, when a
    command cannot be routed here (see `cluster_slot`)."""
    if client._initialize:
        await client.initialize()
    table = client.commands_parser.commands
    slots = []
    for command in commands:
        slot = None if command.kwargs.get("target_nodes") else cluster_slot(command.args, table)
        if slot is None:
            return None
        slots.append(slot)
    manager = client.nodes_manager
    routing = Routing(slots)
    for _attempt in range(ROUTE_ATTEMPTS):
        batches = routing.groups(
            lambda slot: manager.get_node_from_slot(slot),
            lambda host, port: manager.get_node(host=host, port=port),
        )
        sent = await asyncio.gather(
            *(_send_async(node, asking, [commands[i] for i in ix]) for node, asking, ix in batches)
        )
        for (_node, _asking, indices), replies in zip(batches, sent, strict=True):
            routing.settle(indices, replies)
        if not routing.todo:
            break
        for moved in routing.moved:
            await manager.move_slot(moved)
        if routing.pause:
            await asyncio.sleep(RETRY_PAUSE)
        if routing.refresh:
            with contextlib.suppress(RedisClusterException):  # the next sends say what failed
                await manager.initialize()
        routing.next_round()
    return routing.replies


# --- blocking --------------------------------------------------------------------------------


def _send_blocking(node: Any, asking: bool, commands: list[Sequence[Any]]) -> Any:
    """Write one batch to `node` (a `redis.cluster.ClusterNode`); returns a reader of its replies
    (called after every node's batch was written, so the nodes work at the same time)."""
    pool = node.redis_connection.connection_pool
    try:
        connection = pool.get_connection()  # connects (and gives nothing back if it cannot)
        connection.connect()
    except LOST as exc:
        failed = NotSent(f"{node.name}: {exc}")
        return lambda: failed
    try:
        connection.send_packed_command([packed(commands, asking)], check_health=False)
    except LOST as exc:
        connection.disconnect()
        pool.release(connection)
        lost = [OutcomeUnknown(f"{node.name}: connection lost while sending: {exc}")]
        return lambda: lost * len(commands)
    except BaseException:
        connection.disconnect()
        pool.release(connection)
        raise

    def read() -> list[Any]:
        replies: list[Any] = []
        try:
            for _command in commands:
                if asking:
                    with contextlib.suppress(ResponseError):
                        connection.read_response()
                try:
                    replies.append(connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except LOST as exc:
            connection.disconnect()
            unknown = OutcomeUnknown(f"{node.name}: connection lost before the reply: {exc}")
            return replies + [unknown] * (len(commands) - len(replies))
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    return read


def execute_routed_blocking(client: Any, commands: Sequence[Sequence[Any]]) -> list[Any] | None:
    """`execute_routed` for the blocking `redis.RedisCluster` (`gateway.publish_many`): raw
    replies (no response callbacks), the same redirects and the same never-twice rule."""
    table = client.commands_parser.commands
    slots = []
    for command in commands:
        slot = cluster_slot(command, table)
        if slot is None:
            return None
        slots.append(slot)
    manager = client.nodes_manager
    routing = Routing(slots)
    for _attempt in range(ROUTE_ATTEMPTS):
        batches = routing.groups(
            lambda slot: manager.get_node_from_slot(slot),
            lambda host, port: manager.get_node(host=host, port=port),
        )
        readers = [
            _send_blocking(node, asking, [commands[i] for i in indices])
            for node, asking, indices in batches
        ]
        for (_node, _asking, indices), read in zip(batches, readers, strict=True):
            routing.settle(indices, read())
        if not routing.todo:
            break
        for moved in routing.moved:
            manager.move_slot(moved)
        if routing.pause:
            time.sleep(RETRY_PAUSE)
        if routing.refresh:
            with contextlib.suppress(RedisClusterException):
                manager.initialize()
        routing.next_round()
    return routing.replies
