"""What a live session records of each turn, in one module.

The media a session moves are defined where they are made: audio, speech and
transcripts by ``voice.types`` (which imports nothing of ours), video frames by
``avatar.types``. A barge-in is a ``voice.vad.SpeechStarted`` while the companion speaks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STAGES", "TurnLatency"]


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
        return {
            n: (getattr(self, n) - self.voice_end) * 1000
            for n in STAGES
            if getattr(self, n) is not None
        }


STAGES = ("transcript", "first_token", "first_audio", "first_video_sent", "first_audio_sent")
