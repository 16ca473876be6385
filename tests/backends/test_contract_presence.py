"""The presence store contract: every test runs against the memory store and a real
redis-server. Two "gateways" are two ids on one store, as two processes are on one Redis."""

from __future__ import annotations

import time

import pytest

from gateway.backends.bundle import Backend
from gateway.backends.presence import Member, PresenceStore


@pytest.fixture
def store(backend: Backend) -> PresenceStore:
    return backend.presence


ALICE = Member("tab-1", "alice", {"name": "Alice"})
ALICE_2 = Member("tab-2", "alice", None)
BOB = Member("tab-1", "bob", None)
ANON = Member("x", None, None)


async def test_join_is_new_once_and_counts_clients_and_users(store: PresenceStore) -> None:
    first = await store.join("room:a", ALICE, "g1")
    assert first.changed and first.count == 1
    again = await store.join("room:a", ALICE, "g1")
    assert not again.changed and again.count == 1
    for member in (ALICE_2, BOB, ANON):
        assert (await store.join("room:a", member, "g1")).changed
    stats = await store.stats("room:a")
    assert (stats.clients, stats.users) == (4, 2)  # anonymous clients count as clients only
    assert (await store.stats("room:other")).clients == 0


async def test_leave_removes_once_and_returns_the_entry(store: PresenceStore) -> None:
    await store.join("room:b", ALICE, "g1")
    await store.join("room:b", ALICE_2, "g1")
    gone = await store.leave("room:b", ALICE.key, "g1")
    assert gone.changed and gone.count == 1 and gone.member == ALICE
    assert not (await store.leave("room:b", ALICE.key, "g1")).changed
    assert (await store.stats("room:b")).users == 1
    last = await store.leave("room:b", ALICE_2.key, "g1")
    assert last.changed and last.count == 0
    assert (await store.stats("room:b")).users == 0


async def test_a_client_taken_over_by_another_gateway_stays(store: PresenceStore) -> None:
    """A client that reconnected to another process: the old one's leave does not remove it."""
    await store.join("room:c", BOB, "g1")
    moved = await store.join("room:c", BOB, "g2")
    assert not moved.changed
    assert not (await store.leave("room:c", BOB.key, "g1")).changed
    assert (await store.stats("room:c")).clients == 1
    assert ("room:c", BOB.key) not in await store.held("g1", 100)
    assert (await store.leave("room:c", BOB.key, "g2")).changed


async def test_one_client_id_of_two_users_is_two_entries(store: PresenceStore) -> None:
    await store.join("room:d", ALICE, "g1")
    await store.join("room:d", BOB, "g1")  # same `tab-1`
    assert (await store.stats("room:d")).clients == 2


async def test_members_page_in_key_order_to_the_end(store: PresenceStore) -> None:
    members = [Member(f"c{n:03d}", f"u{n % 7}", {"n": n}) for n in range(250)]
    for member in members:
        await store.join("room:big", member, "g1")
    seen: list[Member] = []
    after = None
    pages = 0
    while True:
        page = await store.members("room:big", after, 100)
        pages += 1
        seen.extend(page.members)
        if page.next is None:
            break
        assert len(page.members) == 100
        after = page.next
    assert pages == 3
    assert sorted(seen, key=lambda m: m.key) == seen
    assert {m.key for m in seen} == {m.key for m in members}
    assert seen[0].info is not None  # entries come back whole
    empty = await store.members("room:nobody", None, 10)
    assert empty.members == [] and empty.next is None


async def test_a_dead_gateway_is_claimed_once_and_its_entries_listed(
    store: PresenceStore,
) -> None:
    now = time.time()
    assert await store.beat("g1", now + 60)
    assert not await store.beat("g1", now + 60)
    assert await store.beat("g2", now - 1)  # its deadline passed
    await store.join("room:e", ALICE, "g2")
    await store.join("room:f", ALICE, "g2")
    await store.join("room:e", BOB, "g1")
    assert await store.claim_dead(now, lease=30) == ["g2"]
    assert await store.claim_dead(now, lease=30) == []  # claimed: nobody else gets it
    held = await store.held("g2", 100)
    assert sorted(held) == [("room:e", ALICE.key), ("room:f", ALICE.key)]
    for channel, key in held:
        assert (await store.leave(channel, key, "g2")).changed
    await store.release("g2", held)
    assert await store.held("g2", 100) == []
    await store.forget("g2")
    assert await store.claim_dead(now + 3600, lease=30) == ["g1"]  # only g1 is left
    assert (await store.stats("room:e")).clients == 1


async def test_a_claimer_that_dies_leaves_the_dead_gateway_to_the_next(
    store: PresenceStore,
) -> None:
    now = time.time()
    await store.beat("g3", now - 1)
    assert await store.claim_dead(now, lease=5) == ["g3"]
    assert await store.claim_dead(now + 1, lease=5) == []
    assert await store.claim_dead(now + 6, lease=5) == ["g3"]  # the lease ran out


async def test_unwatched_jobs_are_due_after_their_grace(store: PresenceStore) -> None:
    now = time.time()
    await store.watch_job("j1", 10, now)
    await store.join("job:j2", ANON, "g1")
    await store.watch_job("j2", 10, now)  # watched: not due
    assert await store.due_jobs(now + 5, lease=30) == []
    assert await store.due_jobs(now + 11, lease=30) == ["j1"]
    assert await store.due_jobs(now + 12, lease=30) == []  # claimed
    await store.job_watched("j2", False, now + 20)  # its subscriber left
    assert await store.due_jobs(now + 25, lease=30) == []
    await store.job_watched("j1", True, now + 25)  # watched again: not due
    assert await store.due_jobs(now + 31, lease=30) == ["j2"]
    await store.unwatch_job("j2")
    await store.job_watched("j2", False, now + 40)  # no longer opted in: ignored
    await store.job_watched("never", False, now)
    assert await store.due_jobs(now + 3600, lease=30) == []
