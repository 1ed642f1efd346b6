"""The inbound media of a live session: the browser's microphone as ``AudioChunk``s,
and the tracks nobody uses, drained.

aiortc's receiver puts every decoded frame of a remote track into an unbounded queue
that only ``recv()`` empties. A track the server does not read (the chat page's
camera) therefore grows without end, and a reader that falls behind lets the queue
grow with it. Here every inbound track is read as fast as it arrives: the microphone
into a bounded backlog (the oldest frames are dropped and counted when the session
falls too far behind), any other track into :func:`drain`.

The outbound tracks and their clock are in ``runtime.media``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import av
import numpy as np
import soxr
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from runtime.media import RATE
from voice.types import AudioChunk

__all__ = ["BACKLOG_FRAMES", "InboundStats", "drain", "inbound_audio"]

log = logging.getLogger(__name__)

# At most 10 s of 20 ms Opus frames wait for the listener (a barge-in awaiting a reply
# task's worker thread holds it up for seconds on a loaded host; audio is not dropped
# for that), ~2 MB of stereo s16: bounded, where aiortc's own queue is not.
BACKLOG_FRAMES = 500


@dataclass(slots=True)
class InboundStats:
    """Counters of one inbound track (read them; the reader updates them).

    Attributes:
        frames: frames received from the track.
        dropped: frames dropped, oldest first, because the backlog was full (the
            listener fell more than ``backlog`` frames behind); they show as a pts gap.
        max_backlog: the most frames that waited at once.
    """

    frames: int = 0
    dropped: int = 0
    max_backlog: int = 0


def _mono_float(frame: av.AudioFrame) -> np.ndarray:
    """Any PyAV audio frame → mono float32 in [-1, 1]."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    data = data if frame.format.is_planar else data.reshape(-1, channels).T
    if data.dtype.kind == "i":  # s16, s32
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    return data.astype(np.float32).mean(axis=0)


async def _pump(
    track: MediaStreamTrack, backlog: deque, stats: InboundStats, wake: asyncio.Event
) -> None:
    """Move frames from the track into ``backlog`` as they come; None marks the end."""
    warned = -float("inf")
    try:
        while True:
            frame = await track.recv()
            stats.frames += 1
            if len(backlog) == backlog.maxlen:
                stats.dropped += 1
                if time.monotonic() - warned > 5:
                    warned = time.monotonic()
                    log.warning(
                        "inbound %s: listener behind; %d frames dropped", track.kind, stats.dropped
                    )
            backlog.append(frame)
            stats.max_backlog = max(stats.max_backlog, len(backlog))
            wake.set()
    except MediaStreamError:
        pass
    finally:
        backlog.append(None)  # may push out the oldest frame: the end must arrive
        wake.set()


async def inbound_audio(
    track: MediaStreamTrack, *, backlog: int = BACKLOG_FRAMES, stats: InboundStats | None = None
) -> AsyncIterator[AudioChunk]:
    """The browser's microphone as mono float32 48 kHz chunks.

    Frames are taken off the track as they arrive; at most ``backlog`` wait for the
    consumer (older ones are dropped and counted in ``stats``), so memory stays bounded
    however far behind the consumer falls.

    Args:
        track: a received audio track (Opus: 48 kHz, often stereo s16).
        backlog: frames that may wait for the consumer.
        stats: counters to update (frames, dropped, max_backlog).

    Yields:
        ``AudioChunk(pcm, 48000, pts)``; ``pts`` in seconds from the first frame, from the
        frame's RTP time when it has one (so losses and drops show as pts gaps). Ends
        when the track ends; feed the chunks to ``voice.vad.TurnDetector.run``.
    """
    if backlog < 1:
        raise ValueError(f"backlog must be at least 1 frame, got {backlog}")
    stats = stats if stats is not None else InboundStats()
    waiting: deque[av.AudioFrame | None] = deque(maxlen=backlog)
    wake = asyncio.Event()
    pump = asyncio.create_task(_pump(track, waiting, stats, wake), name="inbound-audio")
    first: float | None = None
    resampler: soxr.ResampleStream | None = None
    rate, sent = RATE, 0
    try:
        while True:
            while not waiting:
                wake.clear()
                await wake.wait()
            frame = waiting.popleft()
            if frame is None or track.readyState != "live":
                return  # ended: what still waited is dropped with it
            pcm = _mono_float(frame)
            if frame.sample_rate != RATE:
                if resampler is None or rate != frame.sample_rate:
                    rate = frame.sample_rate
                    resampler = soxr.ResampleStream(rate, RATE, 1, dtype="float32")
                pcm = resampler.resample_chunk(pcm)
            t = float(frame.time) if frame.time is not None else sent / RATE
            first = t if first is None else first
            sent += len(pcm)
            if len(pcm):
                yield AudioChunk(pcm=pcm, sample_rate=RATE, pts=t - first)
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump


async def drain(track: MediaStreamTrack) -> int:
    """Read ``track`` until it ends and throw every frame away (a track nobody uses:
    without a reader aiortc queues its decoded frames without end).

    Returns:
        The number of frames drained.
    """
    count = 0
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
            count += 1
    return count
