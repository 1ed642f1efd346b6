"""The frames that flow through a live session, in one module.

Data frames are ordered and dropped on an interrupt; control frames go out of band.
Audio, speech and transcripts are defined by ``voice`` (which imports nothing of
ours) and video by ``avatar``; they are re-exported here so a session speaks of one
set of frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from avatar.types import EndOfSegment, VideoFrame
from voice.types import AudioChunk, SpeechChunk, Timing, Transcript

__all__ = [
    "AudioChunk",
    "EndOfSegment",
    "Interrupt",
    "ReplyText",
    "SpeechChunk",
    "Timing",
    "Transcript",
    "TurnLatency",
    "VideoFrame",
]


@dataclass(frozen=True, slots=True)
class ReplyText:
    """A sentence of the companion's reply, as it is spoken (data frame)."""

    text: str
    turn: int


@dataclass(frozen=True, slots=True)
class Interrupt:
    """The person spoke over the companion (control frame): stop speaking now."""

    at: float
    turn: int


@dataclass(frozen=True, slots=True)
class TurnLatency:
    """Timestamps of one turn (``time.monotonic()`` seconds; None = did not happen).

    voice_end → transcript → first_token → first_audio (TTS) → first_video_sent →
    first_audio_sent.
    """

    turn: int
    voice_end: float
    transcript: float | None = None
    first_token: float | None = None
    first_audio: float | None = None
    first_video_sent: float | None = None
    first_audio_sent: float | None = None

    def stages_ms(self) -> dict[str, float]:
        """Each stage's time after voice_end, in ms (missing stages left out)."""
        names = (
            "transcript",
            "first_token",
            "first_audio",
            "first_video_sent",
            "first_audio_sent",
        )
        return {
            n: (getattr(self, n) - self.voice_end) * 1000
            for n in names
            if getattr(self, n) is not None
        }
