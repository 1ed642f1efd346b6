"""The inbound audio of a live session: the browser's microphone as ``AudioChunk``s.

The outbound tracks and their clock are in ``runtime.media``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import av
import numpy as np
import soxr
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from runtime.media import RATE
from voice.types import AudioChunk


def _mono_float(frame: av.AudioFrame) -> np.ndarray:
    """Any PyAV audio frame → mono float32 in [-1, 1]."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    data = data if frame.format.is_planar else data.reshape(-1, channels).T
    if data.dtype.kind == "i":  # s16, s32
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    return data.astype(np.float32).mean(axis=0)


async def inbound_audio(track: MediaStreamTrack) -> AsyncIterator[AudioChunk]:
    """The browser's microphone as mono float32 48 kHz chunks.

    Args:
        track: a received audio track (Opus: 48 kHz, often stereo s16).

    Yields:
        ``AudioChunk(pcm, 48000, pts)``; ``pts`` in seconds from the first frame, from the
        frame's RTP time when it has one (so losses show as pts gaps). Ends when the
        track ends; feed the chunks to ``voice.vad.TurnDetector.run``.
    """
    first: float | None = None
    resampler: soxr.ResampleStream | None = None
    rate, sent = RATE, 0
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
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
