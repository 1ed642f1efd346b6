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

__all__ = ["BACKLOG_FRAMES", "InboundStats", "conceal", "drain", "inbound_audio"]

log = logging.getLogger(__name__)

# At most 10 s of 20 ms Opus frames wait for the listener (a barge-in awaiting a reply
# task's worker thread holds it up for seconds on a loaded host; audio is not dropped
# for that), ~2 MB of stereo s16: bounded, where aiortc's own queue is not.
BACKLOG_FRAMES = 500
FRAME_SAMPLES = 960  # a 20 ms Opus frame at 48 kHz
MAX_CONCEAL = RATE  # a longer gap is made up by 1 s: the rest is not known to be speech
FADE = (0.5, 0.25, 0.125)  # the last frame repeated at these gains, then silence


def conceal(last: np.ndarray, samples: int) -> np.ndarray:
    """``samples`` of audio to stand in for lost frames after ``last``: ``last`` again,
    fading by half with each repeat, then silence (what simple VoIP concealment does;
    Whisper hears lost 20 ms frames filled so as well as uncut speech, 5 % loss)."""
    out = np.zeros(samples, np.float32)
    at = 0
    for gain in FADE:
        n = min(len(last), samples - at)
        if n <= 0:
            break
        out[at : at + n] = last[:n] * gain
        at += n
    return out


@dataclass(slots=True)
class InboundStats:
    """Counters of one inbound track (read them; the reader updates them).

    Attributes:
        frames: frames received from the track.
        dropped: frames dropped, oldest first, because the backlog was full (the
            listener fell more than ``backlog`` frames behind); not made up, so that
            the listener catches up.
        dropped_samples: their length at 48 kHz (the reader takes it as given up).
        max_backlog: the most frames that waited at once.
        concealed_s: audio made up for frames lost on the way (pts gaps), in seconds.
    """

    frames: int = 0
    dropped: int = 0
    dropped_samples: int = 0
    max_backlog: int = 0
    concealed_s: float = 0.0


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
                if (oldest := backlog[0]) is not None:
                    stats.dropped_samples += round(oldest.samples * RATE / oldest.sample_rate)
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
        ``AudioChunk(pcm, 48000, pts)``, one after the other without gaps: a frame lost on
        the way (its RTP time skipped, ``runtime.rtp_receiver.LowDelayAudio``) is made up
        by :func:`conceal` (at most :data:`MAX_CONCEAL` per gap), so pauses keep their
        length and words their timing; ``pts`` counts the samples yielded. Ends when the
        track ends; feed the chunks to ``voice.vad.TurnDetector.run``.
    """
    if backlog < 1:
        raise ValueError(f"backlog must be at least 1 frame, got {backlog}")
    stats = stats if stats is not None else InboundStats()
    waiting: deque[av.AudioFrame | None] = deque(maxlen=backlog)
    wake = asyncio.Event()
    pump = asyncio.create_task(_pump(track, waiting, stats, wake), name="inbound-audio")
    first: float | None = None
    resampler: soxr.ResampleStream | None = None
    rate, sent, given_up = RATE, 0, 0
    last: np.ndarray | None = None  # the last frame's samples, for concealment
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
            if len(pcm) and last is not None:
                # Samples lost on the way before this frame: RTP time neither yielded,
                # nor dropped from the backlog, nor given up.
                missing = round((t - first) * RATE) - sent - given_up - stats.dropped_samples
                if missing >= FRAME_SAMPLES // 2:
                    fill = conceal(last, min(missing, MAX_CONCEAL))
                    given_up += missing - len(fill)
                    stats.concealed_s += len(fill) / RATE
                    yield AudioChunk(pcm=fill, sample_rate=RATE, pts=sent / RATE)
                    sent += len(fill)
            if len(pcm):
                yield AudioChunk(pcm=pcm, sample_rate=RATE, pts=sent / RATE)
                sent, last = sent + len(pcm), pcm
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
