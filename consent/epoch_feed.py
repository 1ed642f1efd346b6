"""The revocation epoch pushed to a node: one PostgreSQL listener per process.

On PostgreSQL every epoch move (a revoke, a retention sweep, a deployment's list of faces
edited) also sends ``NOTIFY likeness_consent_epoch, '<new epoch>'`` in its own transaction
(``consent.store._db``), delivered when it commits. :class:`EpochFeed` holds one
autocommit psycopg connection that LISTENs on that channel, so a node hears of a move made
on any other node within milliseconds, and its sessions wait on :meth:`EpochFeed.wait_moved`
instead of each reading the database five times a second. SQLite (one host) needs no feed.

What makes it safe:

- On every (re)connect it LISTENs first, then reads the epoch: a move committed between
  the two is notified, read, or both. A notification sent while the node was disconnected
  is lost; the read catches it up.
- Every ``check_s`` it reads the epoch again on the same connection, for the whole node
  (a backstop for a lost notification, and a probe: a connection that died without a
  word times out and is replaced).
- A lost connection is reconnected with backoff. If it is not back within
  ``blind_after_s``, or a backstop read is not answered within ``blind_after_s`` (a
  silent link: nothing reset, nothing answered; psycopg gives such a read up only
  10 s after its timeout, cancelling it), the feed is *blind*: :attr:`EpochFeed.blind`
  is True, every waiter wakes, and ``consent.gate.watch_grant`` refuses real faces
  (fail closed). The synthetic face needs no grant, so its sessions go on. Once
  reconnected (and caught up) the feed is healthy again; a real face is admitted again
  from the next offer on. Should the listening task ever end by itself, the feed is
  blind at once. From a link cut silently to blind: at most ``check_s`` of silence,
  then ``blind_after_s``.

Call :meth:`EpochFeed.start` (it waits for the first connection, at most
``blind_after_s``) and :meth:`EpochFeed.stop`. ``runtime.companion`` owns the one feed of
``likeness serve`` and hangs it on the gate (``ConsentGate.feed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
import structlog
from sqlalchemy.engine import make_url

from consent.models import State
from consent.store._db import EPOCH_CHANNEL

if TYPE_CHECKING:
    from consent.store import ConsentStore

log = structlog.get_logger("likeness.consent")

APPLICATION_NAME = "likeness-epoch-feed"  # pg_stat_activity.application_name of the listener
_READ = f"SELECT epoch FROM {State.__tablename__} WHERE id = 1"
_CONNECT_TIMEOUT_S = 5  # one connection attempt; the blind timer runs apart from it


@dataclass(frozen=True, slots=True)
class FeedOptions:
    """How the feed listens and how long it may be without the channel.

    Attributes:
        blind_after_s: a connection lost and not back after this many seconds makes the
            feed blind: sessions showing a real face end (``consent.blind_after_s``).
        check_s: read the epoch again this often on the listening connection; the
            read itself may take as long before the connection counts as lost.
        first_retry_s: the wait before the first reconnect; each later wait doubles.
        last_retry_s: the longest wait between two reconnects.
    """

    blind_after_s: float = 5.0
    check_s: float = 5.0
    first_retry_s: float = 0.1
    last_retry_s: float = 1.0


def libpq_url(url: str) -> str:
    """``url`` as libpq reads it: the SQLAlchemy driver part dropped
    (``postgresql+psycopg://u@h/db`` → ``postgresql://u@h/db``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class EpochFeed:
    """The latest revocation epoch of a PostgreSQL store, pushed by NOTIFY (see the module).

    Args:
        url: the store's database URL (SQLAlchemy or libpq form).
        options: the bound, the backstop read and the reconnect backoff.

    Creating it opens no connection; :meth:`start` does. Use it from one event loop.
    """

    def __init__(self, url: str, options: FeedOptions | None = None) -> None:
        self.options = options or FeedOptions()
        self._url = libpq_url(url)
        self._epoch: int | None = None
        self._connected = False
        self._blind = False
        self._down_since = time.monotonic()
        self._changed = asyncio.Event()  # set and replaced whenever the state changes
        self._blind_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._error = ""  # why the last connection ended or failed
        self.reconnects = 0  # connections made after the first

    @classmethod
    def for_store(cls, store: ConsentStore, options: FeedOptions | None = None) -> EpochFeed | None:
        """The feed of ``store``'s database; None for SQLite (one host: sessions poll)."""
        return None if store.url.startswith("sqlite") else cls(store.url, options)

    # ---- what sessions read ----------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        """The latest epoch heard or read; None before the first connection."""
        return self._epoch

    @property
    def connected(self) -> bool:
        """True while the listening connection is up and caught up."""
        return self._connected

    @property
    def blind(self) -> bool:
        """True while the connection has been down longer than ``blind_after_s``."""
        return self._blind

    def health(self) -> dict[str, object]:
        """The feed's state for ``/health``: ``listening``, ``reconnecting`` or ``blind``,
        the epoch, seconds down, reconnects."""
        state = "blind" if self._blind else "listening" if self._connected else "reconnecting"
        down = 0.0 if state == "listening" else time.monotonic() - self._down_since
        return {
            "state": state,
            "epoch": self._epoch,
            "down_s": round(down, 1),
            "reconnects": self.reconnects,
        }

    def blind_reason(self) -> str:
        """Why a real face may not be shown while blind, in plain words."""
        down = time.monotonic() - self._down_since
        return (
            f"this node lost its revocation channel to the consent database {down:.0f} s ago "
            f"(the bound is {self.options.blind_after_s:g} s): a real person's face cannot be "
            "shown until it is back"
        )

    async def wait_moved(self, seen: int | None) -> int | None:
        """Wait until the epoch differs from ``seen`` or the feed is blind; returns the
        epoch then. Check :attr:`blind` after it returns; bound the wait with
        ``asyncio.timeout`` (a grant's expiry, say).

        Cheap for any number of waiters: they share one :class:`asyncio.Event`.
        """
        await self._wait_until(lambda: self._blind or self._epoch != seen)
        return self._epoch

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        while not done():
            await self._changed.wait()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ---- life --------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; returns once connected, or blind after ``blind_after_s``."""
        if self._task is None:
            self._down()
            self._task = asyncio.create_task(self._run(), name="epoch-feed")
            self._task.add_done_callback(self._ended)
        await self._wait_until(lambda: self._connected or self._blind)

    async def stop(self) -> None:
        """Stop listening and close the connection (safe to call twice)."""
        if self._blind_timer is not None:
            self._blind_timer.cancel()
            self._blind_timer = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._connected = False

    async def _run(self) -> None:
        retry = self.options.first_retry_s
        while True:
            try:
                await self._listen()
            except Exception as err:  # noqa: BLE001 - any failure: down, reconnect
                self._error = f"{type(err).__name__}: {err}"
                if self._connected:
                    log.warning("revocation channel lost; reconnecting", error=self._error)
                    retry = self.options.first_retry_s
                self._down()
            await asyncio.sleep(retry)
            retry = min(2 * retry, self.options.last_retry_s)

    async def _listen(self) -> None:
        """One connection: LISTEN, read the epoch, then follow notifications (and read
        again after ``check_s`` of silence) until the connection fails."""
        conn = await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            application_name=APPLICATION_NAME,
            connect_timeout=_CONNECT_TIMEOUT_S,
        )
        async with conn:
            await conn.execute(f"LISTEN {EPOCH_CHANNEL}")
            self._up(await self._read(conn))
            while True:
                async for note in conn.notifies(timeout=self.options.check_s):
                    with contextlib.suppress(ValueError):  # not ours: the read catches up
                        self._set(int(note.payload))
                # Silence: ask. A silent link is noticed only by this read, so the bound
                # runs from now: once the read times out, psycopg spends up to 10 s more
                # trying to cancel it before the connection counts as lost.
                self._arm()
                self._heard(await self._read(conn))

    async def _read(self, conn: psycopg.AsyncConnection) -> int:
        async with asyncio.timeout(self.options.check_s):
            cursor = await conn.execute(_READ)
            row = await cursor.fetchone()
        if row is None:
            raise ValueError(f"{State.__tablename__} has no row: run the migrations")
        return int(row[0])

    def _set(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._epoch = epoch
            self._signal()

    def _up(self, epoch: int) -> None:
        if self._blind_timer is not None:
            self._blind_timer.cancel()
            self._blind_timer = None
        if self._blind:
            log.warning("revocation channel back", epoch=epoch)
        if self._epoch is not None:
            self.reconnects += 1
        self._connected, self._blind, self._epoch = True, False, epoch
        self._signal()

    def _heard(self, epoch: int) -> None:
        """A backstop read was answered: the link is alive (and no longer blind)."""
        if self._blind_timer is not None:
            self._blind_timer.cancel()
            self._blind_timer = None
        if self._blind:
            log.warning("revocation channel back", epoch=epoch)
            self._blind = False
            self._signal()
        self._set(epoch)

    def _down(self) -> None:
        """The connection is down (or not up yet): arm the blind timer."""
        self._connected = False
        self._arm()

    def _arm(self) -> None:
        """Blind ``blind_after_s`` from now unless the server is heard from before
        (once per outage)."""
        if self._blind_timer is None and not self._blind:
            self._down_since = time.monotonic()
            loop = asyncio.get_running_loop()
            self._blind_timer = loop.call_later(self.options.blind_after_s, self._go_blind)

    def _ended(self, task: asyncio.Task) -> None:
        """The listening task ended without :meth:`stop`: blind at once (fail closed)."""
        if task is self._task:
            self._error = "the listening task ended" if task.cancelled() else repr(task.exception())
            self._connected = False
            self._go_blind()

    def _go_blind(self) -> None:
        if self._blind_timer is not None:  # harmless when the timer is what called
            self._blind_timer.cancel()
            self._blind_timer = None
        self._blind = True
        log.error(
            "revocation channel down too long: real faces refused",
            down_s=round(time.monotonic() - self._down_since, 1),
            error=self._error,
        )
        self._signal()


__all__ = ["APPLICATION_NAME", "EpochFeed", "FeedOptions", "libpq_url"]
