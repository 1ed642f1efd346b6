"""Outbound tracks that survive a bug in ``recv()``, and say so when they cannot.

aiortc's RTP sender ends a track for good on the first exception its ``recv()``
raises: it logs a warning and stops the track, while the peer connection still says
"connected". The person then faces a frozen picture or silence with nothing to tell
them or the server why. :class:`GuardedTrack` wraps ``recv()``:

- an exception is logged (traceback on the first of a run), counted, reported through
  ``on_failure``, and answered with the subclass's fallback frame (silence, or the last
  picture again), paced like any frame: the track goes on and the next ``recv()``
  tries the real source again;
- ``max_failures`` failures in a row stop the track and end it with
  ``MediaStreamError``: its ``"ended"`` event fires, and the owner (the session) ends
  the conversation with a reason the client sees.

A subclass implements :meth:`GuardedTrack._produce` (what ``recv`` would do) and
:meth:`GuardedTrack._fallback`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = ["GuardedTrack", "TrackFailure"]

log = logging.getLogger(__name__)

# (track kind, the error, failures in a row, fatal: the track stops now)
TrackFailure = Callable[[str, BaseException, int, bool], None]


class GuardedTrack(MediaStreamTrack):
    """A media track whose ``recv()`` never dies of one exception (see the module).

    Attributes:
        on_failure: called ``(kind, error, failures in a row, fatal)`` on every failed
            ``_produce``; set it before the track runs. It must not raise.
        max_failures: failures in a row after which the track stops (fatal).
        failures: every failure so far (a counter for tests and stats).
        gave_up: the guard stopped the track (too many failures in a row).
    """

    max_failures = 25

    def __init__(self) -> None:
        super().__init__()
        self.on_failure: TrackFailure | None = None
        self.failures = 0
        self.gave_up = False
        self._in_a_row = 0

    async def _produce(self) -> av.AudioFrame | av.VideoFrame:
        """The next frame at its time (raise ``MediaStreamError`` once stopped)."""
        raise NotImplementedError

    async def _fallback(self) -> av.AudioFrame | av.VideoFrame:
        """A harmless frame at the next slot, paced like ``_produce`` (silence, the last
        picture again); called after ``_produce`` raised."""
        raise NotImplementedError

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        """The next frame; a failure of the source yields the fallback frame instead.

        Raises:
            MediaStreamError: the track was stopped, or failed ``max_failures`` times in
                a row (then it stops itself: its ``"ended"`` event fires).
        """
        if self.readyState != "live":
            raise MediaStreamError
        try:
            frame = await self._produce()
        except (MediaStreamError, asyncio.CancelledError):
            raise
        except Exception as err:  # noqa: BLE001 - the point of the guard
            return await self._failed(err)
        self._in_a_row = 0
        return frame

    async def _failed(self, err: Exception) -> av.AudioFrame | av.VideoFrame:
        self.failures += 1
        self._in_a_row += 1
        fatal = self._in_a_row >= self.max_failures
        if self._in_a_row == 1:
            log.error("%s track: recv failed; sending a fallback frame", self.kind, exc_info=err)
        if self.on_failure is not None:
            self.on_failure(self.kind, err, self._in_a_row, fatal)
        if fatal:
            log.error("%s track: %d failures in a row; stopping it", self.kind, self._in_a_row)
            self.gave_up = True
            self.stop()
            raise MediaStreamError(f"{self.kind} track failed: {err!r}") from err
        try:
            return await self._fallback()
        except (MediaStreamError, asyncio.CancelledError):
            raise
        except Exception as again:  # noqa: BLE001 - nothing left to send: stop
            log.error("%s track: the fallback failed too; stopping it", self.kind, exc_info=again)
            if self.on_failure is not None:
                self.on_failure(self.kind, again, self._in_a_row, True)
            self.gave_up = True
            self.stop()
            raise MediaStreamError(f"{self.kind} track failed: {again!r}") from again
