"""Is the other side still there, and are our own tracks still running?

A live session dies quietly in three known ways: the page vanishes (a closed lid, a
killed browser, a dropped network) and nothing says goodbye; the server vanishes and
the page keeps showing a frozen face; an outbound track's ``recv()`` raises and aiortc
ends that track while the peer connection still says "connected".
:class:`SessionLiveness` answers all three for one session:

- a heartbeat, ``{"type": "heartbeat"}`` on the events channel every
  :data:`HEARTBEAT_S`, so the page notices a dead server (``web/static/js/heartbeat.js``);
- a watchdog that ends the session when the client sent nothing (no message, no inbound
  media) for ``peer_timeout_s`` once it was heard at all, or no audio for
  ``media_timeout_s``; time the event loop stood still does not count against the client;
- the outbound tracks' guard reports (:mod:`runtime.track_guard`): a failure is logged
  with the session id and told to the client as an ``error`` event while the track
  sends fallback frames; a track that ends while the session is live ends the session
  with a reason the client sees (``state: ended``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any

from runtime.inbound import InboundStats
from runtime.logs import get_logger
from runtime.track_guard import GuardedTrack

__all__ = ["HEARTBEAT_S", "PEER_TIMEOUT_S", "SessionLiveness"]

log = get_logger("likeness.session")

HEARTBEAT_S = 0.5  # the server's heartbeat on the events channel
# The page is gone when it sent nothing (no message, no media) for this long, once it
# was heard at all; before that, ``server.media_timeout_s`` applies (ICE may be slow).
PEER_TIMEOUT_S = 2.0
# A track that ends by itself ends the session after this long, unless the session
# ended meanwhile (a peer hanging up stops the senders a moment before it says so).
ENDED_GRACE_S = 0.5


class SessionLiveness:
    """The liveness watch of one session (see the module).

    Args:
        session_id: for the logs.
        send_event: sends one event to the client (must not raise).
        end: ends the session with a reason (called once, from the watch or a track).
        media_timeout_s: no inbound audio for this long ends the session.
        peer_timeout_s: the client counts as gone after this long without a message or
            inbound media (once it was heard).

    Call :meth:`media_arrived` per inbound audio chunk and :meth:`client_alive` per
    message from the client; :meth:`start` it (it runs :meth:`heartbeat` and
    :meth:`watch`); hand the outbound tracks to :meth:`guard`; set :attr:`closed` when
    the session ends.
    """

    def __init__(
        self,
        session_id: str,
        send_event: Callable[[dict[str, Any]], None],
        end: Callable[[str], None],
        media_timeout_s: float,
        peer_timeout_s: float = PEER_TIMEOUT_S,
    ) -> None:
        if peer_timeout_s <= 0 or media_timeout_s <= 0:
            raise ValueError("the liveness timeouts must be positive")
        self.session_id = session_id
        self._send = send_event
        self._end = end
        self.media_timeout_s = media_timeout_s
        self.peer_timeout_s = peer_timeout_s
        self.inbound = InboundStats()  # the microphone reader's counters
        self.closed = False
        self.last_media = 0.0  # loop time of the last inbound audio
        self.last_heard: float | None = None  # loop time of the client's last message
        self.ended_by: str | None = None  # the reason this watch ended the session

    def start(self, spawn: Callable[[Coroutine[Any, Any, None], str], Any]) -> None:
        """The session starts now (the timeouts count from here): ``spawn(coro, name)``
        runs the heartbeat and the watchdog as the session's tasks."""
        self.last_media = asyncio.get_running_loop().time()
        spawn(self.watch(), "watchdog")
        spawn(self.heartbeat(), "heartbeat")

    def media_arrived(self) -> None:
        """An inbound audio chunk arrived."""
        self.last_media = asyncio.get_running_loop().time()

    def client_alive(self) -> None:
        """The client said something (a heartbeat, any message): it is still there."""
        self.last_heard = asyncio.get_running_loop().time()

    @property
    def heard_from_client(self) -> bool:
        """Media or a message came from the client (its connection is up)."""
        return self.last_heard is not None or self.inbound.frames > 0

    async def heartbeat(self) -> None:
        """Send ``{"type": "heartbeat"}`` every :data:`HEARTBEAT_S` until closed."""
        while not self.closed:
            self._send({"type": "heartbeat"})
            await asyncio.sleep(HEARTBEAT_S)

    async def watch(self) -> None:
        """End the session when the client went silent (see the module); returns then."""
        loop = asyncio.get_running_loop()
        tick = min(0.25, self.peer_timeout_s / 4)
        arrived = self.inbound.frames
        while not self.closed:
            before = loop.time()
            await asyncio.sleep(tick)
            now = loop.time()
            stalled = now - before - tick
            if stalled > tick:  # the loop was blocked: packets wait unread; not the client
                self.last_media += stalled
                if self.last_heard is not None:
                    self.last_heard += stalled
            if self.inbound.frames != arrived:  # the reader took frames off the track:
                arrived = self.inbound.frames  # media came, even if the listener is busy
                self.last_media = now  # (e.g. awaiting Whisper at the end of a turn)
            heard = max(self.last_media, self.last_heard or -math.inf)
            if self.heard_from_client and now - heard > self.peer_timeout_s:
                reason, timeout = "client gone", self.peer_timeout_s
            elif now - self.last_media > self.media_timeout_s:
                reason, timeout = "no media", self.media_timeout_s
            else:
                continue
            if self.closed:
                return
            log.warning("client silent", session=self.session_id, reason=reason, timeout_s=timeout)
            self._finish(reason)
            return

    def guard(self, *tracks: GuardedTrack) -> None:
        """Watch the outbound tracks: failures reported, an unexpected end ends the session."""
        for track in tracks:
            track.on_failure = self._track_failed
            track.on("ended", lambda track=track: self._track_ended(track))

    def _track_failed(self, kind: str, err: BaseException, in_a_row: int, fatal: bool) -> None:
        """A track's recv() raised; it sent a fallback frame (or stopped, when ``fatal``:
        its "ended" event follows)."""
        if in_a_row == 1 or fatal:
            log.error(
                "media track failed",
                session=self.session_id,
                track=kind,
                in_a_row=in_a_row,
                fatal=fatal,
                error=repr(err),
            )
        if in_a_row == 1 and not fatal:
            what = "the voice" if kind == "audio" else "the face"
            self._send({"type": "error", "message": f"{what} stalled; recovering"})

    def _track_ended(self, track: GuardedTrack) -> None:
        """A track ended while the session is live (aiortc stops a track after any
        exception in its sender, and when the peer hangs up): unless the session ends
        by itself within :data:`ENDED_GRACE_S` (a hang-up), end it with a reason the
        client sees."""
        if self.closed:
            return
        if track.gave_up:
            self._ended_under_us(track)
        else:
            asyncio.get_running_loop().call_later(ENDED_GRACE_S, self._ended_under_us, track)

    def _ended_under_us(self, track: GuardedTrack) -> None:
        if self.closed:
            return
        reason = f"{track.kind} track {'failed' if track.gave_up else 'ended'}"
        log.error("media track ended during the session", session=self.session_id, reason=reason)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self.ended_by is None:
            self.ended_by = reason
            self._end(reason)
