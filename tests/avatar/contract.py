"""The AvatarGenerator contract as checks any backend must pass (procedural, neural, ...).

Each check is an ``async`` function taking a :class:`Backend` (how to build the
generator, and the one thing backends may differ in: how many frames a first piece of
unflushed audio releases) and the speech to use. Test modules parametrise over
backends and call them::

    @pytest.mark.parametrize("check", contract.CHECKS)
    async def test_contract(backend, speech, check):
        await check(backend, speech)

What the contract promises is in ``avatar/base.py``: chunk-by-chunk frames, one pts
clock shared by segments and idle frames, flush → EndOfSegment, clear_buffer →
EndOfSegment(interrupted) and idle at once, a cancelled pull loses no frame, an
unflushed segment that runs dry goes on as silence, aclose ends iteration.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from avatar.base import AvatarGenerator
from avatar.types import EndOfSegment, PreparedAvatar, VideoFrame

FPS = 25.0


@dataclass(frozen=True)
class Speech:
    pcm: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.pcm) / self.sample_rate


@dataclass(frozen=True)
class Backend:
    """How the contract builds and probes one backend.

    Attributes:
        name: backend name (``gen.name``).
        make: ``make(size=..., underrun_timeout=...)`` → a fresh generator.
        first_s: seconds of audio pushed (unflushed) before frames are counted.
        early_frames: how many speaking frames those ``first_s`` seconds release.
    """

    name: str
    make: Callable[..., AvatarGenerator]
    first_s: float
    early_frames: int


def procedural_backend(avatar: PreparedAvatar) -> Backend:
    """The procedural generator on ``avatar``: 0.2 s of audio releases frames 0..4 (its
    look-ahead is 40 ms)."""
    from avatar.procedural import ProceduralGenerator, ProceduralOptions

    return Backend(
        "procedural",
        lambda **kw: ProceduralGenerator.load(avatar, ProceduralOptions(**kw)),
        first_s=0.2,
        early_frames=5,
    )


async def until_end(frames, wait_s: float = 10.0) -> list:
    """Items up to and including the next EndOfSegment (each within ``wait_s``)."""
    items: list = []
    while not items or not isinstance(items[-1], EndOfSegment):
        items.append(await asyncio.wait_for(anext(frames), wait_s))
    return items


async def satisfies_the_protocol(backend: Backend, speech: Speech) -> None:
    gen = backend.make(size=128)
    assert isinstance(gen, AvatarGenerator)
    assert gen.name == backend.name and gen.fps == FPS and gen.size == 128
    frame = await asyncio.wait_for(anext(aiter(gen)), 10)
    assert isinstance(frame, VideoFrame) and not frame.speaking and frame.segment == -1
    assert frame.image.shape == (128, 128, 3) and frame.image.dtype == np.uint8
    assert frame.pts == 0.0 and frame.index == 0
    await gen.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(aiter(gen))


async def frames_come_chunk_by_chunk(backend: Backend, speech: Speech) -> None:
    gen = backend.make(size=128)
    frames = aiter(gen)
    first = int(backend.first_s * speech.sample_rate)
    await gen.push_audio(speech.pcm[:first], speech.sample_rate)
    early = [await asyncio.wait_for(anext(frames), 10)]
    assert isinstance(early[0], VideoFrame) and early[0].speaking and early[0].pts == 0.0
    # Everything the first piece covers comes now; the next frame waits for audio.
    while True:
        try:
            early.append(await asyncio.wait_for(anext(frames), 0.5))
        except TimeoutError:
            break
    assert all(f.speaking for f in early)
    assert len(early) == backend.early_frames
    await gen.push_audio(speech.pcm[first:], speech.sample_rate)
    await gen.flush()
    rest = await until_end(frames)
    end = rest.pop()
    video = early + rest
    assert len(video) == math.ceil(speech.duration * FPS - 1e-6)
    assert [f.index for f in video] == list(range(len(video)))
    np.testing.assert_allclose([f.pts for f in video], np.arange(len(video)) / FPS)
    assert end.segment == video[0].segment and not end.interrupted
    assert end.pts == pytest.approx(speech.duration)
    after = await asyncio.wait_for(anext(frames), 10)  # idle again, on the same clock
    assert not after.speaking and after.pts == pytest.approx(len(video) / FPS)
    await gen.aclose()


async def segments_share_one_clock(backend: Backend, speech: Speech) -> None:
    gen = backend.make(size=128)
    frames = aiter(gen)
    idle = [await asyncio.wait_for(anext(frames), 10) for _ in range(3)]
    part = speech.pcm[: len(speech.pcm) // 3]
    await gen.push_audio(part, speech.sample_rate)
    await gen.flush()
    await gen.push_audio(part, speech.sample_rate)
    await gen.flush()
    items = await until_end(frames)
    items += await until_end(frames)
    items.append(await asyncio.wait_for(anext(frames), 10))
    video = [i for i in idle + items if isinstance(i, VideoFrame)]
    np.testing.assert_allclose([f.pts for f in video], np.arange(len(video)) / FPS)
    ends = [i for i in items if isinstance(i, EndOfSegment)]
    assert ends[0].segment != ends[1].segment
    seg0 = [f for f in video if f.segment == ends[0].segment]
    seg1 = [f for f in video if f.segment == ends[1].segment]
    n = math.ceil(len(part) / speech.sample_rate * FPS - 1e-6)
    assert len(seg0) == len(seg1) == n
    assert seg0[0].pts == pytest.approx(3 / FPS)  # speech starts at the next free slot
    assert seg1[0].index == seg0[-1].index + 1
    assert ends[1].pts == pytest.approx(seg1[0].pts + len(part) / speech.sample_rate)
    assert not video[-1].speaking
    await gen.aclose()


async def clear_buffer_returns_to_idle(backend: Backend, speech: Speech) -> list[VideoFrame]:
    """Returns the idle frames after the cut, for backend-specific checks."""
    gen = backend.make(size=128)
    frames = aiter(gen)
    await gen.push_audio(speech.pcm, speech.sample_rate)
    spoken = [await asyncio.wait_for(anext(frames), 10) for _ in range(20)]
    assert all(f.speaking for f in spoken)
    await gen.clear_buffer()
    end = await asyncio.wait_for(anext(frames), 10)
    assert isinstance(end, EndOfSegment) and end.interrupted
    assert end.segment == spoken[0].segment
    assert end.pts == pytest.approx(spoken[-1].pts + 1 / FPS)
    after = await asyncio.wait_for(anext(frames), 10)
    assert isinstance(after, VideoFrame) and not after.speaking and after.segment == -1
    assert after.pts == pytest.approx(end.pts)
    later = [await asyncio.wait_for(anext(frames), 10) for _ in range(4)]
    assert all(not f.speaking for f in later)
    await gen.aclose()
    return later


async def cancelled_pull_loses_no_frame(backend: Backend, speech: Speech) -> None:
    """A consumer that times out mid-frame gets that frame on its next pull."""
    gen = backend.make(size=128)
    frames = aiter(gen)
    part = speech.pcm[: int(0.6 * speech.sample_rate)]
    await gen.push_audio(part, speech.sample_rate)
    await gen.flush()
    items, timeouts = [], 0
    while not items or not isinstance(items[-1], EndOfSegment):
        try:
            items.append(await asyncio.wait_for(anext(frames), 0.001))
        except TimeoutError:
            timeouts += 1
    video = items[:-1]
    assert timeouts > 0
    assert [f.index for f in video] == list(range(len(video)))
    assert len(video) == math.ceil(len(part) / speech.sample_rate * FPS - 1e-6)
    await gen.aclose()


async def dry_segment_goes_on_as_silence(backend: Backend, speech: Speech) -> None:
    gen = backend.make(size=128, underrun_timeout=0.2)
    frames = aiter(gen)
    await gen.push_audio(speech.pcm[: int(0.1 * speech.sample_rate)], speech.sample_rate)
    got = [await asyncio.wait_for(anext(frames), 5.0) for _ in range(12)]
    assert all(f.speaking for f in got)
    np.testing.assert_allclose([f.pts for f in got], np.arange(12) / FPS)
    await gen.aclose()


async def push_after_close_fails(backend: Backend, speech: Speech) -> None:
    from avatar.errors import GeneratorError

    gen = backend.make(size=128)
    await gen.aclose()
    with pytest.raises(GeneratorError):
        await gen.push_audio(speech.pcm[:100], speech.sample_rate)


CHECKS = (
    satisfies_the_protocol,
    frames_come_chunk_by_chunk,
    segments_share_one_clock,
    clear_buffer_returns_to_idle,
    cancelled_pull_loses_no_frame,
    dry_segment_goes_on_as_silence,
    push_after_close_fails,
)
