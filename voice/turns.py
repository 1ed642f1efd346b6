"""End of turn that does not always wait the full silence: the words decide.

:class:`EagerTurns` wraps a :class:`~voice.vad.TurnDetector` whose ``pause_ms`` is
set. At each pause (``pause_ms`` of silence, e.g. 300 ms) it starts transcribing the
turn so far in the background. If the words come back as a finished sentence
(:func:`finished_sentence`) while the person is still silent, the turn ends at once,
its transcript attached; otherwise the turn ends after ``min_silence_ms`` as before,
and still carries that transcript when no speech came since the pause (the audio is
the same span), so it is not decoded twice. Either way the transcript, the slowest
step before the reply, overlaps the silence the person leaves anyway.

The cost: one transcription of the turn so far per pause, also for pauses inside a
sentence; and a person who stops after a finished sentence and then goes on is
answered early (their next words interrupt the reply, as any barge-in does).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

from voice.types import AudioChunk, Transcript
from voice.vad import SpeechPaused, TurnDetector, TurnEnded, VADEvent, at_16k

# Words a finished sentence rarely ends with: a pause after them is a pause in the middle.
# Wrongly calling a turn unfinished only costs the usual wait; so the list is generous.
TRAILING_WORDS = frozenset(
    {"a", "an", "the", "this", "these", "those", "some", "any", "my", "your", "his", "her",
     "our", "their", "its", "and", "or", "but", "so", "because", "if", "that", "than", "then",
     "when", "while", "to", "of", "in", "on", "at", "for", "with", "from", "about", "into",
     "onto", "over", "under", "by", "as", "like", "is", "are", "was", "were", "am", "be",
     "been", "have", "has", "had", "do", "does", "did", "can", "could", "would", "will",
     "should", "must", "not", "very", "really", "just", "i", "um", "uh", "er", "erm", "hmm"}
)  # fmt: skip
_WORD = re.compile(r"[\w']+")


def finished_sentence(text: str) -> bool:
    """Whether a transcript reads as a finished sentence: it ends with ``.``, ``!`` or
    ``?`` (not an ellipsis), and not on a word that leads on ("and", "the", "my", ...)."""
    text = text.strip().rstrip("\"')]”’")
    if not text or text[-1] not in ".!?。！？" or text.endswith(("...", "…")):
        return False
    words = _WORD.findall(text.lower())
    return bool(words) and words[-1] not in TRAILING_WORDS


class EagerTurns:
    """A turn detector whose turns may end at a pause once their words are finished.

    Args:
        detector: the end-of-turn detector (owned from now on); its ``pause_ms`` must
            be set, between 1 and ``min_silence_ms``.
        transcribe: transcribes a turn's 16 kHz audio (e.g. ``WhisperASR.transcribe``).
        finished: decides from the words whether the turn is over at a pause.

    Raises:
        ValueError: ``pause_ms`` is off or not shorter than ``min_silence_ms``.
    """

    def __init__(
        self,
        detector: TurnDetector,
        transcribe: Callable[[AudioChunk], Awaitable[Transcript]],
        finished: Callable[[str], bool] = finished_sentence,
    ) -> None:
        opts = detector.options
        if not 0 < opts.pause_ms < opts.min_silence_ms:
            raise ValueError(
                f"vad pause_ms must be between 1 and min_silence_ms ({opts.min_silence_ms}), "
                f"got {opts.pause_ms}"
            )
        self.detector = detector
        self._transcribe = transcribe
        self._finished = finished
        self.ended_early = 0  # turns ended at a pause (for logs and benchmarks)

    @property
    def speaking(self) -> bool:
        """True between SpeechStarted and TurnEnded."""
        return self.detector.speaking

    async def run(self, src: AsyncIterator[AudioChunk]) -> AsyncIterator[VADEvent]:
        """Streaming stage like :meth:`TurnDetector.run`; a :class:`TurnEnded` may come
        early, and carries its ``transcript`` when the pause's one still holds."""
        pause: SpeechPaused | None = None
        words: asyncio.Task[Transcript] | None = None
        judged = False  # the pause's words came back and were not a finished sentence
        try:
            async for pcm in at_16k(src):
                for event in self.detector.push(pcm):
                    if isinstance(event, SpeechPaused):
                        _drop(words)
                        pause, words, judged = (
                            event,
                            asyncio.create_task(self._transcribe(event.audio)),
                            False,
                        )
                    elif isinstance(event, TurnEnded):
                        yield await self._with_words(event, pause, words)
                        pause = words = None
                    else:
                        yield event
                if words is None or judged:
                    if words is not None and not self.detector.paused:
                        pause = words = None  # speech resumed: those words are stale
                    continue
                if not self.detector.paused:  # speech resumed before the words came
                    _drop(words)
                    pause = words = None
                elif words.done():
                    heard = await _result(words)
                    if heard is not None and self._finished(heard.text):
                        ended = self.detector.end_turn_now()
                        if ended is not None:
                            self.ended_early += 1
                            yield replace(ended, transcript=_spanned(heard, ended))
                        pause = words = None
                    elif heard is None:
                        pause = words = None
                    else:
                        judged = True  # wait for min_silence_ms; reuse the words then
            for event in self.detector.flush():
                yield await self._with_words(event, pause, words)
        finally:
            _drop(words)

    @staticmethod
    async def _with_words(
        ended: TurnEnded, pause: SpeechPaused | None, words: asyncio.Task[Transcript] | None
    ) -> TurnEnded:
        """``ended`` with the pause's transcript if that covers the same audio."""
        if pause is None or words is None or not _same_span(pause.audio, ended.audio):
            _drop(words)
            return ended
        heard = await _result(words)
        return ended if heard is None else replace(ended, transcript=_spanned(heard, ended))


def _drop(words: asyncio.Task[Transcript] | None) -> None:
    if words is not None and not words.done():
        words.cancel()


async def _result(words: asyncio.Task[Transcript]) -> Transcript | None:
    """The pause's transcript; None when it failed (the turn is then transcribed anew)."""
    try:
        return await words
    except Exception:  # noqa: BLE001 - a failed guess costs nothing but the guess
        return None


def _spanned(heard: Transcript, ended: TurnEnded) -> Transcript:
    return replace(heard, start=ended.start, end=ended.end)


def _same_span(a: AudioChunk, b: AudioChunk) -> bool:
    return a.sample_rate == b.sample_rate and a.pts == b.pts and len(a.pcm) == len(b.pcm)
