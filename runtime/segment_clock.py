"""Where a spoken reply lands in media time, and what of it was heard: pure bookkeeping.

A reply's speech is one generator segment. Its audio arrives in chunks while the
LLM still writes; it is held until the generator's first frame of that segment (pts
``P``) exists, then the segment is anchored at media time ``T``, the first video slot
at or after ``max(now + LEAD_S, end of the audio already queued)``. From then on its
audio at offset ``o`` plays at ``T + o`` and its frame with pts ``p`` shows at
``T + (p - P)``, so lips and sound share one clock.

No asyncio, no tracks, no wall clock: the caller passes the media time and the end
of the queued audio, and applies what comes back (:class:`Pushed`, :class:`Anchored`)
to its tracks. ``runtime.session.Session`` is the caller.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from voice.types import SpeechChunk

LEAD_S = 0.06  # jitter margin between scheduling and playing


@dataclass
class Segment:
    """A reply's speech as one generator segment; it grows while TTS speaks.

    Attributes:
        turn: the turn this reply answers.
        chunks: ``(offset, chunk)`` of every chunk pushed, offset in seconds of speech.
        length: seconds of speech pushed so far.
        anchor: media time of offset 0, once the first frame arrived (None before).
        first_pts: the generator pts of the segment's first frame.
        sentences: ``(offset, text)`` where each sentence starts.
        generator_id: the generator's number for this segment, once a frame showed it.
        done: the reply has no more audio to come.
    """

    turn: int
    chunks: list[tuple[float, SpeechChunk]] = field(default_factory=list)
    length: float = 0.0
    anchor: float | None = None
    first_pts: float = 0.0
    sentences: list[tuple[float, str]] = field(default_factory=list)
    generator_id: int | None = None
    done: bool = False

    def frame_time(self, pts: float) -> float:
        """The media time the segment's frame with generator pts ``pts`` shows at.

        Raises:
            ValueError: the segment is not anchored yet.
        """
        if self.anchor is None:
            raise ValueError("the segment is not anchored yet")
        return self.anchor + (pts - self.first_pts)

    def unplayed(self, now: float) -> float:
        """Seconds of the speech pushed so far that have not played by media time ``now``
        (all of it before the anchor)."""
        played = 0.0 if self.anchor is None else min(max(now - self.anchor, 0.0), self.length)
        return self.length - played

    def heard_text(self, heard_until: float) -> str:
        """The reply's words played before media time ``heard_until``.

        Each sentence's words are spread evenly over its audio; a word counts as heard
        once the nearer half of its share was played (rounding). Nothing before the
        anchor: an unanchored segment was never heard.
        """
        if self.anchor is None:
            return ""
        played = heard_until - self.anchor
        words: list[str] = []
        for i, (start, text) in enumerate(self.sentences):
            if played <= start:
                break
            end = self.sentences[i + 1][0] if i + 1 < len(self.sentences) else self.length
            share = min(1.0, (played - start) / max(end - start, 1e-6))
            parts = text.split()
            words += parts[: int(round(len(parts) * share))]
        return " ".join(words)


@dataclass(frozen=True, slots=True)
class Pushed:
    """What to do with a chunk just pushed.

    Attributes:
        offset: where the chunk starts in the reply, seconds.
        play_now: the segment is anchored: schedule the chunk now, continuing its run.
        caption: ``(media time, sentence)`` when this chunk starts a sentence of an
            anchored segment: show that sentence then.
    """

    offset: float
    play_now: bool
    caption: tuple[float, str] | None = None


@dataclass(frozen=True, slots=True)
class Anchored:
    """A segment just anchored: schedule ``held`` from ``at`` as one contiguous run
    (the first chunk at ``at``), end that run when ``finished``, and show each caption
    at its media time.

    Attributes:
        segment: the segment, now with its anchor.
        at: media time of the segment's offset 0 (a video slot).
        held: the audio pushed before the anchor, in order.
        captions: ``(media time, sentence)`` of every sentence pushed so far.
        finished: the reply's audio is complete: flush the track's resampler.
    """

    segment: Segment
    at: float
    held: tuple[SpeechChunk, ...]
    captions: tuple[tuple[float, str], ...]
    finished: bool


class SegmentClock:
    """The replies of one session in order: pushed, then anchored, then playing.

    Replies become generator segments in the order they are pushed; the one playing
    is :attr:`current`.

    Args:
        fps: the video frame rate: anchors fall on its slots.
        lead: seconds between deciding an anchor and playing it (jitter margin).
    """

    def __init__(self, fps: float, lead: float = LEAD_S) -> None:
        self.fps = fps
        self.lead = lead
        self._pending: deque[Segment] = deque()  # pushed, not yet anchored
        self.current: Segment | None = None  # anchored: playing or played

    @property
    def pending(self) -> tuple[Segment, ...]:
        """The segments pushed and not anchored yet, oldest first."""
        return tuple(self._pending)

    def open(self, turn: int) -> Segment:
        """A new reply for ``turn``; push its chunks with :meth:`push`."""
        segment = Segment(turn=turn)
        self._pending.append(segment)
        return segment

    def push(self, segment: Segment, sentence: str, chunk: SpeechChunk) -> Pushed:
        """Add ``chunk`` (speaking ``sentence``) to the end of ``segment``."""
        new_sentence = not segment.sentences or segment.sentences[-1][1] != sentence
        offset = segment.length
        if new_sentence:
            segment.sentences.append((offset, sentence))
        segment.chunks.append((offset, chunk))
        segment.length += chunk.duration
        if segment.anchor is None:
            return Pushed(offset, play_now=False)
        caption = (segment.anchor + offset, sentence) if new_sentence else None
        return Pushed(offset, play_now=True, caption=caption)

    def start_time(self, now: float, queued_until: float) -> float:
        """The anchor a segment gets now: the first frame slot at or after
        ``max(now + lead, queued_until)`` (as ``VideoOut.next_slot`` counts slots)."""
        start = max(now + self.lead, queued_until)
        return math.ceil(start * self.fps - 1e-6) / self.fps

    def anchor(
        self, segment: Segment, first_pts: float, now: float, queued_until: float
    ) -> Anchored:
        """Fix ``segment``'s media time from its first frame (pts ``first_pts``); it
        becomes :attr:`current`.

        Args:
            segment: a pushed segment (anchoring it twice moves it again).
            first_pts: generator pts of its first frame (0.0 when there is no face).
            now: media time now.
            queued_until: media time where the audio already queued ends.
        """
        segment.anchor = self.start_time(now, queued_until)
        segment.first_pts = first_pts
        if segment in self._pending:
            self._pending.remove(segment)
        self.current = segment
        return Anchored(
            segment=segment,
            at=segment.anchor,
            held=tuple(chunk for _offset, chunk in segment.chunks),
            captions=tuple((segment.anchor + o, text) for o, text in segment.sentences),
            finished=segment.done,
        )

    def segment_for(self, generator_segment: int) -> Segment | None:
        """The reply a speaking frame of generator segment ``generator_segment`` belongs
        to: the current one if it is that segment, else the oldest pending one (which
        takes that number), else the current one."""
        current = self.current
        if current is not None and generator_segment == current.generator_id:
            return current
        if self._pending:
            segment = self._pending[0]
            segment.generator_id = generator_segment
            return segment
        return current

    def interrupt(self, heard_until: float) -> str:
        """Barge-in: forget every reply; returns the words heard of the one playing (or
        about to play) before media time ``heard_until``."""
        segment = self.current or (self._pending[0] if self._pending else None)
        self._pending.clear()
        self.current = None
        return segment.heard_text(heard_until) if segment is not None else ""
