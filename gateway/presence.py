"""Presence: who is subscribed to a channel across every gateway process, and telling the
channel when they come and go (docs/presence.md).

The hub tells `Presence` when a subscriber attaches to or detaches from a channel (`joined`,
`left`); `Presence` keeps one entry per client per channel in the backend's `PresenceStore`,
counted locally so that several connections of one client (same `?client=` id and token
subject) make one entry. Whichever process's store call changed an entry announces it, so
each join, leave, occupied and vacated is announced once, however many processes there are:

- `presence.join` / `presence.leave`: live-only events on the channel (`Bus.publish_live`),
  for namespaces in `GATEWAY_PRESENCE_EVENTS`;
- `channel.occupied` / `channel.vacated` on `system:occupancy` (kept in history like any
  event), for namespaces in `GATEWAY_OCCUPANCY_EVENTS`, then to the `occupancy_listeners`
  (the jobs layer: the webhook, and `cancel_when_unwatched`).

A client that disconnects stays present for `GATEWAY_PRESENCE_GRACE` seconds: reconnecting
with the same client id (to this process or another) within it makes no leave and no join.
Every process renews a heartbeat; the entries of one that stops (SIGKILL) are removed by
another, with their leave events, within `GATEWAY_PRESENCE_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.backends.bundle import Backend
from gateway.backends.presence import Change, Member, PresenceStats
from gateway.channels import ChannelService
from gateway.errors import BackendUnavailable, Forbidden
from gateway.events import Event, encode_presence_cursor, namespace_of
from gateway.outbound import Subscriber
from gateway.protocol.v1 import PresenceEntry
from gateway.settings import Settings
from gateway.tokens import ChannelToken

log = logging.getLogger("gateway.presence")

OCCUPANCY_CHANNEL: Final = "system:occupancy"
"""Where `channel.occupied` / `channel.vacated` are published (namespace rule `system`)."""
CLIENT_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A client-chosen id (`?client=`): stable across the client's reconnects, unique per tab."""
REAP_BATCH: Final = 200

OccupancyListener = Callable[[str, bool, Event | None], Awaitable[None]]
"""`(channel, occupied, the system event or None)`: called once per change, in one process."""


def valid_client_id(value: str | None) -> bool:
    return value is not None and CLIENT_ID_RE.fullmatch(value) is not None


def new_client_id() -> str:
    return "c" + secrets.token_hex(8)


@dataclass(slots=True)
class _Local:
    """A client present on a channel through this process: how many of its subscriptions are
    here, and the leave waiting out its grace once none is."""

    member: Member
    count: int = 1
    timer: asyncio.TimerHandle | None = None


class Presence:
    """One process's side of presence; made by `Services`, started and closed by the app."""

    def __init__(self, settings: Settings, backend: Backend, channels: ChannelService) -> None:
        self.settings = settings
        self.backend = backend
        self.store = backend.presence
        self.channels = channels
        self.gateway = "g" + secrets.token_hex(8)
        """This process's id in the store (its entries and heartbeat)."""
        self.occupancy_listeners: list[OccupancyListener] = []
        self._slots: dict[tuple[Subscriber, str], tuple[str, str]] = {}
        self._local: dict[tuple[str, str], _Local] = {}
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.beats = 0

    # --- identity -----------------------------------------------------------------------------

    def member_for(
        self, client: str | None, token: ChannelToken | None, raw_token: str | None = None
    ) -> Member:
        """The entry a subscription makes: the client id it chose (else a new one), its token's
        `sub` and `info` claim. In open (dev) mode tokens are not checked, but one that
        verifies still names its user."""
        if token is None and raw_token:
            with contextlib.suppress(Forbidden):
                token = self.channels.policy.verify(raw_token)
        user = token.sub or None if token is not None else None
        info = self._info(token) if token is not None else None
        chosen = client if client is not None and valid_client_id(client) else new_client_id()
        return Member(chosen, user, info)

    def _info(self, token: ChannelToken) -> Any:
        """The token's `info` claim when it is an object within `GATEWAY_PRESENCE_INFO_BYTES`
        (the token verified already: its payload is read, not checked again)."""
        try:
            payload = token.raw.split(".")[1]
            claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (IndexError, binascii.Error, orjson.JSONDecodeError, ValueError):
            return None
        info = claims.get("info") if isinstance(claims, dict) else None
        if not isinstance(info, dict):
            return None
        if len(orjson.dumps(info)) > self.settings.presence_info_bytes:
            log.warning("a token's info claim is over GATEWAY_PRESENCE_INFO_BYTES; shown as null")
            return None
        return info

    # --- the hub's hooks ----------------------------------------------------------------------

    async def joined(self, subscriber: Subscriber, channel: str, member: Member | None) -> None:
        if not self.settings.tracks(channel):
            return
        member = member or Member(new_client_id(), None)
        slot = (channel, member.key)
        self._slots[(subscriber, channel)] = slot
        local = self._local.get(slot)
        if local is not None:
            local.count += 1
            if local.timer is not None:  # back within the grace: still present, no events
                local.timer.cancel()
                local.timer = None
            return
        self._local[slot] = _Local(member)
        try:
            async with self._lock(slot):
                change = await self.store.join(channel, member, self.gateway)
            if change.changed:
                await self._announce(channel, change, joined=True)
        except BackendUnavailable as exc:
            log.warning("presence join on %s not recorded: %s", channel, exc)

    async def left(self, subscriber: Subscriber, channel: str, *, disconnected: bool) -> None:
        """A subscription ended: by `unsubscribe` (the client leaves now) or with its
        connection (`disconnected`: it leaves after the grace unless it comes back)."""
        slot = self._slots.pop((subscriber, channel), None)
        if slot is None:
            return
        local = self._local.get(slot)
        if local is None:
            return
        local.count -= 1
        if local.count > 0:
            return
        grace = self.settings.presence_grace
        if disconnected and grace > 0:
            loop = asyncio.get_running_loop()
            local.timer = loop.call_later(grace, self._leave_later, slot)
            return
        await self._leave(slot)

    async def _leave(self, slot: tuple[str, str]) -> None:
        local = self._local.get(slot)
        if local is None or local.count > 0:
            return
        del self._local[slot]
        channel, key = slot
        try:
            async with self._lock(slot):
                change = await self.store.leave(channel, key, self.gateway)
            if change.changed:
                await self._announce(channel, change, joined=False)
        except BackendUnavailable as exc:
            log.warning("presence leave on %s not recorded: %s", channel, exc)

    def _lock(self, slot: tuple[str, str]) -> asyncio.Lock:
        """One store call at a time per entry, in order: a join right after a leave must not
        overtake it (it would be removed by it)."""
        lock = self._locks.get(slot)
        if lock is None:
            lock = self._locks[slot] = asyncio.Lock()
        return lock

    def _leave_later(self, slot: tuple[str, str]) -> None:
        """The grace ran out and the client did not come back."""
        local = self._local.get(slot)
        if local is not None:
            local.timer = None
        task = asyncio.ensure_future(self._leave(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, channel: str, change: Change, *, joined: bool) -> None:
        _listed, events, occupancy = self.settings.presence_for(channel)
        most = self.settings.presence_events_max
        if events and change.member is not None and (not most or change.count <= most):
            kind = "presence.join" if joined else "presence.leave"
            await self.backend.bus.publish_live(channel, kind, change.member.entry())
        if change.count == (1 if joined else 0):
            event = None
            if occupancy:
                kind = "channel.occupied" if joined else "channel.vacated"
                event = await self.backend.bus.publish(
                    OCCUPANCY_CHANNEL, kind, {"channel": channel}
                )
            for listener in self.occupancy_listeners:
                try:
                    await listener(channel, joined, event)
                except BackendUnavailable as exc:
                    log.warning("occupancy of %s not handled: %s", channel, exc)

    # --- reads --------------------------------------------------------------------------------

    def _authorize(self, channel: str, api_key: str | None, token: ChannelToken | None) -> None:
        """Like history: the namespace's subscribe rule for clients; and presence must be on."""
        self.channels.authorize_read(channel, api_key=api_key, token=token)
        if namespace_of(channel) not in self.settings.presence:
            raise Forbidden(
                f"presence is not kept for {namespace_of(channel)!r} channels (GATEWAY_PRESENCE)"
            )

    async def members(
        self,
        channel: str,
        after: str | None,
        limit: int,
        *,
        api_key: str | None,
        token: ChannelToken | None,
    ) -> tuple[list[PresenceEntry], str | None]:
        """One page of the channel's entries and the cursor of the next (None at the end)."""
        self._authorize(channel, api_key, token)
        page = await self.store.members(channel, after, limit)
        following = encode_presence_cursor(page.next) if page.next is not None else None
        entries: list[PresenceEntry] = [
            {"client": member.client, "user": member.user, "info": member.info}
            for member in page.members
        ]
        return entries, following

    async def stats(
        self, channel: str, *, api_key: str | None, token: ChannelToken | None
    ) -> PresenceStats:
        self._authorize(channel, api_key, token)
        return await self.store.stats(channel)

    # --- heartbeats and the dead ---------------------------------------------------------------

    @property
    def beat_interval(self) -> float:
        return self.settings.presence_timeout / 4

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="gateway-presence")

    async def close(self) -> None:
        """Stop beating, and let the survivors remove this process's entries after the grace
        (clients told to reconnect elsewhere take their entries over before it ends)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for local in self._local.values():
            if local.timer is not None:
                local.timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(BackendUnavailable):
            await self.store.beat(self.gateway, time.time() + self.settings.presence_grace)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except BackendUnavailable as exc:
                log.warning("presence heartbeat failed: %s", exc)
            except Exception:
                log.exception("presence heartbeat failed")
            await asyncio.sleep(self.beat_interval)

    async def tick(self) -> None:
        """Renew this process's heartbeat, then remove the entries of processes whose
        heartbeat ran out (each dead process is claimed by one survivor)."""
        now = time.time()
        lost = await self.store.beat(self.gateway, now + self.settings.presence_timeout / 2)
        if lost and self.beats:
            await self._rejoin()
        self.beats += 1
        for dead in await self.store.claim_dead(now, self.settings.presence_timeout):
            if dead != self.gateway:
                await self.reap(dead)

    async def reap(self, gateway: str) -> None:
        """Remove every entry a dead process held, announcing each leave."""
        while batch := await self.store.held(gateway, REAP_BATCH):
            for channel, key in batch:
                change = await self.store.leave(channel, key, gateway)
                if change.changed:
                    await self._announce(channel, change, joined=False)
            await self.store.release(gateway, batch)
        await self.store.forget(gateway)
        log.info("removed the presence of gateway %s (no heartbeat)", gateway)

    async def _rejoin(self) -> None:
        """The store lost this process (Redis restarted empty): enter its clients again."""
        log.warning("presence state was lost; entering %d local entries again", len(self._local))
        for (channel, _key), local in list(self._local.items()):
            await self.store.join(channel, local.member, self.gateway)
