"""The contract every avatar generator implements (after livekit agents' video
generator contract, ``voice/avatar/_types.py``).

Life of a generator::

    gen = SomeGenerator.load(prepared_avatar, options)   # cheap __init__, load() does the I/O
    await gen.push_audio(pcm, sample_rate, timings)      # as TTS audio arrives, any chunk size
    await gen.flush()                                    # end of this speech segment
    async for item in gen:                               # VideoFrame ... EndOfSegment ...
        ...
    await gen.clear_buffer()                             # barge-in: drop queued speech now
    await gen.aclose()

- Frames come out chunk by chunk as audio arrives, never only after a segment ends.
- A speaking frame's ``pts`` is the audio time it shows, counted from the first
  sample pushed (segments follow each other on one clock), so the runtime can pair
  it with the audio of the same pts.
- With no speech queued the generator yields idle (listening) frames: blinks,
  breathing, small head motion; their pts continue the clock at ``fps``. Iteration
  never ends until ``aclose()``; the consumer paces it (the media track pulls at
  ``fps`` and drops stale frames).
- After ``flush()`` the generator yields the rest of the segment's frames, then an
  :class:`~avatar.types.EndOfSegment`. ``clear_buffer()`` drops queued audio and
  frames at once, yields ``EndOfSegment(interrupted=True)`` and returns to idle.
- Heavy work runs off the event loop (worker thread or GPU stream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from avatar.types import EndOfSegment, TimingLike, VideoFrame

GeneratorItem = VideoFrame | EndOfSegment


@runtime_checkable
class AvatarGenerator(Protocol):
    """A streaming talking-head generator for one prepared avatar and one session.

    Attributes:
        name: registry name ("procedural", ...).
        fps: frames per second of audio time.
        size: output frames are (size, size, 3) uint8 RGB.
    """

    name: str
    fps: float
    size: int

    async def push_audio(
        self, pcm: np.ndarray, sample_rate: int, timings: Sequence[TimingLike] | None = None
    ) -> None:
        """Queue speech audio (mono float32) of the current segment.

        ``timings`` are phoneme/word timings relative to the start of this chunk; when
        given the mouth follows them (visemes), otherwise the audio itself.
        """
        ...

    async def flush(self) -> None:
        """Mark the end of the current speech segment (an EndOfSegment follows its frames)."""
        ...

    async def clear_buffer(self) -> None:
        """Barge-in: drop all queued audio and frames now and return to idle."""
        ...

    def __aiter__(self) -> AsyncIterator[GeneratorItem]:
        """Frames and segment ends, in order; idle frames when nothing is queued."""
        ...

    async def aclose(self) -> None:
        """Stop; iteration ends."""
        ...
