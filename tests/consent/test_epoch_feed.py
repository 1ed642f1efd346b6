"""Revocation across nodes (#13, part 3): two stores on one PostgreSQL database act as
node A and node B; B's epoch feed hears A's epoch moves by LISTEN/NOTIFY, catches up
after a lost connection, and fails closed for real faces when it cannot reconnect.

B's feed logs in as a role of its own, so a test can lock it out (``NOLOGIN``) and
kill its connection (``pg_terminate_backend``) while A goes on writing.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from sqlalchemy.engine import make_url

from consent.epoch_feed import EpochFeed, FeedOptions, libpq_url
from consent.gate import UNCHECKED, ConsentGate, watch_grant
from consent.keys import SubjectKeys
from consent.store import ConsentStore
from runtime.admission import AdmissionCheck, ConsentUse, watch_admission
from tests.consent.conftest import World

T = TypeVar("T")
SCOPE = {"deployment": "kiosk", "purpose": "eldercare"}  # what World's grants allow


@pytest.fixture
def nodes(pg_cluster, tmp_path: Path) -> Iterator[tuple[ConsentStore, ConsentStore]]:
    """Node A and node B: two stores (two engines, two pools) on one migrated database."""
    url = pg_cluster.new_database()
    keys = SubjectKeys.load(tmp_path / "keys")
    a = ConsentStore(url, keys, files_dir=tmp_path / "files")
    a.migrate()
    b = ConsentStore(url, keys, files_dir=tmp_path / "files")
    yield a, b
    a.close()
    b.close()


@pytest.fixture
async def start() -> AsyncIterator[Callable]:
    """``await start(feed)`` starts a feed; every feed started is stopped at the end."""
    started: list[EpochFeed] = []

    async def go(feed: EpochFeed) -> EpochFeed:
        started.append(feed)
        await feed.start()
        return feed

    yield go
    for feed in started:
        await feed.stop()


class Listener:
    """A login role for B's feed (or B's store) that the test can lock out and let in again.

    Args:
        url: the database (as its superuser).
        privileges: what the role is granted; the feed needs only ``SELECT``.
    """

    def __init__(self, url: str, *privileges: str) -> None:
        self._admin = libpq_url(url)
        self.role = f"feed_{os.urandom(4).hex()}"
        self.url = make_url(url).set(username=self.role).render_as_string(hide_password=False)
        grants = [f'GRANT {p} TO "{self.role}"' for p in privileges or ["SELECT ON consent_state"]]
        self._sql(f'CREATE ROLE "{self.role}" LOGIN', *grants)

    def _sql(self, *statements: str) -> list[tuple | None]:
        """Run ``statements`` as the superuser; the first row of each (None: no rows)."""
        with psycopg.connect(self._admin, autocommit=True) as conn:
            cursors = [conn.execute(text) for text in statements]
            return [c.fetchone() if c.description else None for c in cursors]

    def lock_out(self) -> int:
        """No new logins for the role; its connections killed. Returns how many died."""
        [_, (killed,)] = self._sql(
            f'ALTER ROLE "{self.role}" NOLOGIN',
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE usename = '{self.role}'",
        )
        return int(killed)

    def let_in(self) -> None:
        self._sql(f'ALTER ROLE "{self.role}" LOGIN')


async def until(done: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    """Wait until ``done()`` holds (checked every 10 ms); fail after ``limit_s`` seconds."""
    deadline = time.monotonic() + limit_s
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {limit_s} s for {what}")
        await asyncio.sleep(0.01)


def face_check(gate: ConsentGate, avatar_id: str | None) -> AdmissionCheck:
    """The admission of a session on node B: a real face, or the synthetic one (None)."""
    use = None if avatar_id is None else ConsentUse(gate, avatar_id, **SCOPE)
    return AdmissionCheck(gate, SCOPE["deployment"], SCOPE["purpose"], face=use)


async def stamped(awaitable: Awaitable[T]) -> tuple[T, float]:
    """What ``awaitable`` gives, and ``time.perf_counter()`` the moment it did."""
    return await awaitable, time.perf_counter()


async def watching(
    gate: ConsentGate, avatar_id: str, every_s: float = 60.0, blind_after_s: float = 5.0
) -> asyncio.Task:
    """A session's watch of a real face on node B, admitted once and now waiting.

    By default it polls (and retries a failed read) only every 60 s, so what ends it
    within a second is the feed (or its blindness), never the poll.
    """
    loop = asyncio.get_running_loop()
    admitted = asyncio.Event()
    watch = asyncio.create_task(
        watch_admission(
            face_check(gate, avatar_id),
            every_s,
            lambda _: loop.call_soon_threadsafe(admitted.set),
            blind_after_s=blind_after_s,
        )
    )
    await asyncio.wait_for(admitted.wait(), 30)
    return watch


def test_sqlite_has_no_feed(tmp_path: Path):
    store = ConsentStore(f"sqlite:///{tmp_path / 'c.db'}", SubjectKeys.load(tmp_path / "k"))
    assert EpochFeed.for_store(store) is None  # one host: sessions poll the epoch
    store.close()
    assert libpq_url("postgresql+psycopg://u:p@h:5/db") == "postgresql://u:p@h:5/db"


async def test_every_epoch_move_on_a_reaches_b(nodes, signing_keys, start):
    a, b = nodes
    feed = await start(EpochFeed.for_store(b))
    assert feed.connected and feed.epoch == b.epoch() == 0
    moved = await asyncio.to_thread(a.move_epoch, "deployment list")  # an operator's edit
    assert await asyncio.wait_for(feed.wait_moved(0), 30) == moved == 1
    grant = World(a, signing_keys).grant()
    info = await asyncio.to_thread(a.revoke, grant.id, by="subject", reason="test")
    assert await asyncio.wait_for(feed.wait_moved(1), 30) == info.epoch == 2
    assert feed.health() == {"state": "listening", "epoch": 2, "down_s": 0.0, "reconnects": 0}


async def test_a_revoke_on_a_is_heard_by_b_within_a_second(nodes, signing_keys, start):
    a, b = nodes
    world = World(a, signing_keys)
    grants = [world.grant() for _ in range(21)]  # the 21st keeps the subject's data alive
    feed = await start(EpochFeed.for_store(b))
    latencies = []
    for grant in grants[:20]:
        heard = asyncio.create_task(asyncio.wait_for(stamped(feed.wait_moved(feed.epoch)), 30))
        began = time.perf_counter()
        info = await asyncio.to_thread(a.revoke, grant.id, by="subject", reason="test")
        epoch, at = await heard
        assert epoch == info.epoch
        latencies.append(at - began)
    p50 = statistics.median(latencies)
    p95 = statistics.quantiles(latencies, n=20)[-1]
    print(
        f"revoke on A -> B's feed: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} revokes"
    )
    # Measured (2-core machine, nice 19, 6 runs): p50 9-21 ms, p95 18-37 ms, max 38 ms,
    # the revoke's own transaction included: the 1 s target is ~25x the worst seen.
    # Without the NOTIFY only the feed's 5 s backstop read catches up (p95 5.0 s).
    assert p95 < 1.0


async def test_a_killed_listener_reconnects_and_catches_up(nodes, signing_keys, start):
    a, b = nodes
    listener = Listener(a.url)
    feed = await start(EpochFeed(listener.url, FeedOptions(blind_after_s=60)))
    before = feed.epoch
    assert listener.lock_out() == 1  # B's one listening connection
    await until(lambda: not feed.connected, "B to see its connection die")
    grant = World(a, signing_keys).grant()
    info = await asyncio.to_thread(a.revoke, grant.id, by="subject", reason="test")
    assert feed.epoch == before  # the notification went to nobody
    listener.let_in()
    await until(lambda: feed.connected, "B to reconnect")
    assert feed.epoch == info.epoch == a.epoch()  # caught up by the read after LISTEN
    assert feed.reconnects == 1 and not feed.blind
    moved = await asyncio.to_thread(a.move_epoch, "deployment list")
    assert await asyncio.wait_for(feed.wait_moved(info.epoch), 30) == moved  # listening again


async def test_a_revoke_on_a_ends_a_session_watch_on_b_within_a_second(nodes, signing_keys, start):
    a, b = nodes
    gate = ConsentGate(b, signing_keys)
    gate.feed = await start(EpochFeed.for_store(b))
    latencies = []
    for i in range(5):
        world = World(a, signing_keys, name=f"Person {i}")
        grant = world.grant()
        ending = asyncio.create_task(stamped(await watching(gate, world.avatar)))
        began = time.perf_counter()
        await asyncio.to_thread(a.revoke, grant.id, by="subject", reason="test")
        refusal, ended = await asyncio.wait_for(ending, 30)
        latencies.append(ended - began)
        assert not refusal.allowed and f"grant {grant.id} was revoked" in refusal.reason
    print("revoke on A -> B's session watch ends:", [f"{x * 1000:.0f} ms" for x in latencies])
    # Measured (2-core machine, nice 19, 6 runs of 5): 23-67 ms, the re-check's reads
    # and audit included; 1 s (the promise) is ~15x the worst seen.
    assert max(latencies) < 1.0


async def test_b_goes_blind_when_it_cannot_reconnect_and_recovers(nodes, signing_keys, start):
    a, b = nodes
    bound = 1.0
    listener = Listener(a.url)
    gate = ConsentGate(b, signing_keys)
    gate.feed = feed = await start(EpochFeed(listener.url, FeedOptions(blind_after_s=bound)))
    world = World(a, signing_keys)
    grant = world.grant()
    real, synthetic = face_check(gate, world.avatar), face_check(gate, None)
    watch = await watching(gate, world.avatar)
    # The gate's own watch, as the server's cloned-voice watch uses it:
    plain = asyncio.create_task(watch_grant(gate, avatar_id=world.avatar, **SCOPE))

    began = time.monotonic()
    assert listener.lock_out() == 1
    refusal = await asyncio.wait_for(watch, bound + 30)
    waited = time.monotonic() - began
    print(f"B locked out -> real-face watch ended after {waited:.3f} s (bound {bound} s)")
    assert not refusal.allowed and "lost its revocation channel" in refusal.reason
    assert "lost its revocation channel" in (await asyncio.wait_for(plain, 30)).reason
    # Never before the bound; measured 1.017-1.041 s over 5 runs (2-core machine,
    # nice 19): the 0.5 s margin is ~12x the worst lateness seen.
    assert bound <= waited < bound + 0.5
    assert feed.blind and feed.health()["state"] == "blind"
    # Blind: a real face is refused with 503 (another node may serve it); the synthetic
    # face needs no grant and is still admitted (its sessions are never watched).
    refused = await asyncio.to_thread(real)
    assert (refused.allowed, refused.status) == (False, 503)
    assert "lost its revocation channel" in refused.reason
    assert (await asyncio.to_thread(synthetic)).allowed

    listener.let_in()
    await until(lambda: feed.connected, "B to reconnect")
    assert not feed.blind and feed.health()["state"] == "listening"
    assert (await asyncio.to_thread(real)).allowed
    watch = await watching(gate, world.avatar)
    await asyncio.to_thread(a.revoke, grant.id, by="subject", reason="test")
    refusal = await asyncio.wait_for(watch, 30)
    assert f"grant {grant.id} was revoked" in refusal.reason  # heard again, by push


async def test_b_ends_a_real_face_when_its_database_stops_answering(nodes, signing_keys, start):
    """B still hears every move, but B's store can no longer log in (its role locked out,
    its pooled connections killed): the re-check a move on A asks for fails, is retried
    every 0.2 s, and once ``blind_after_s`` has passed the watch ends (fail closed)."""
    a, _ = nodes
    bound = 1.0
    role = Listener(a.url, "ALL ON ALL TABLES IN SCHEMA public")
    b = ConsentStore(role.url, a.keys, files_dir=a.files_dir)
    try:
        gate = ConsentGate(b, signing_keys)
        gate.feed = feed = await start(EpochFeed.for_store(a))  # the superuser: not locked out
        world = World(a, signing_keys)
        world.grant()
        watch = await watching(gate, world.avatar, every_s=0.2, blind_after_s=bound)
        # The clock starts before the lock-out: B's 0.2 s poll may meet a killed connection
        # before the move does (one run ended 0.988 s after the move began, its first
        # failed read earlier). No read can fail before this, so the bound is exact.
        began = time.monotonic()
        assert role.lock_out() >= 1  # B's pooled connection(s)
        await asyncio.to_thread(a.move_epoch, "deployment list")
        moved = time.monotonic()  # committed: the re-checks B is asked for fail from here
        refusal = await asyncio.wait_for(watch, bound + 30)
        ended = time.monotonic()
        print(
            f"B's database locked out -> real-face watch ended {ended - began:.3f} s after "
            f"the lock-out ({ended - moved:.3f} s after the move committed)"
        )
        assert (refusal.allowed, refusal.reason) == (False, UNCHECKED)
        assert feed.connected and not feed.blind  # the channel was fine; the reads were not
        # Measured 1.022-1.039 s after the lock-out over 6 runs (2-core machine, load 5-7,
        # nice 19; before from the move: 1.002-1.011 s over 4 runs); without the fail
        # closed re-check the watch died with StoreError and the face went on. Never before
        # the bound; the slack is counted from the commit, not to charge the move's own
        # transaction (a worker thread, slow under load) to the watch.
        assert ended - began >= bound
        assert ended - moved < bound + 0.5
    finally:
        b.close()
