"""Immutable data that flows out of the voice stages.

The pipeline's frames (``runtime.frames``) re-export these so that there is one
definition of each. Audio is always mono float32 in [-1, 1] with its rate beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True, slots=True, eq=False)
class AudioChunk:
    """A piece of mono audio.

    Attributes:
        pcm: float32 samples in [-1, 1], shape (n,).
        sample_rate: samples per second.
        pts: start time of the first sample, seconds, on the stream's clock.
    """

    pcm: np.ndarray
    sample_rate: int
    pts: float = 0.0

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.pcm) / self.sample_rate


@dataclass(frozen=True, slots=True)
class Timing:
    """When one phoneme or word sounds inside a piece of speech.

    Attributes:
        symbol: the phoneme (IPA) or the word.
        kind: "phoneme" or "word".
        start: seconds from the start of the chunk it belongs to.
        end: seconds from the start of the chunk it belongs to.
    """

    symbol: str
    kind: Literal["phoneme", "word"]
    start: float
    end: float


@dataclass(frozen=True, slots=True, eq=False)
class SpeechChunk:
    """Synthesised speech for (part of) one sentence.

    Attributes:
        pcm: float32 mono samples.
        sample_rate: samples per second.
        text: the text this audio speaks.
        timings: phoneme or word timings relative to this chunk, empty when the
            backend cannot report them.
        is_last: True on the final chunk of a ``synthesize`` call.
    """

    pcm: np.ndarray
    sample_rate: int
    text: str
    timings: tuple[Timing, ...] = ()
    is_last: bool = False

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.pcm) / self.sample_rate


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word with its time in the audio."""

    text: str
    start: float
    end: float
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class Transcript:
    """What the recogniser heard in one turn (or so far, when ``is_final`` is False).

    Attributes:
        text: the words, stripped.
        language: ISO code detected or forced.
        start: turn start on the stream's clock, seconds.
        end: turn end on the stream's clock, seconds.
        is_final: False for a partial hypothesis while the person still speaks.
        words: per-word timings when asked for.
    """

    text: str
    language: str
    start: float = 0.0
    end: float = 0.0
    is_final: bool = True
    words: tuple[Word, ...] = field(default_factory=tuple)
