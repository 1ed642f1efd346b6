"""EagerTurns: real Silero and Whisper tiny.en on Piper speech.

The audio is fed as fast as the stage takes it, except that it stands still while
Whisper works: as on a machine where Whisper keeps up, whatever this one's load (it
took 0.2 s for 2 s of speech unloaded, over 2 s at a load average of 17). So the
tests check the logic; how much sooner replies start is ``likeness bench turns``'.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from voice.asr import WhisperASR
from voice.audio import resample
from voice.turns import EagerTurns, finished_sentence
from voice.types import AudioChunk, Transcript
from voice.vad import SileroVAD, SpeechPaused, TurnDetector, TurnEnded, VADOptions

RATE = 16_000
OPTIONS = VADOptions(min_silence_ms=1500, pause_ms=300)
STEP = 320  # 20 ms, as the browser's microphone arrives


@pytest.fixture(scope="module")
def asr() -> WhisperASR:
    return WhisperASR.load()


@pytest.fixture(scope="module")
def say():
    from voice.tts.registry import load_tts

    tts = load_tts("piper", None)

    def speak(text: str) -> np.ndarray:
        async def run() -> np.ndarray:
            parts = [c async for c in tts.synthesize(text)]
            return resample(np.concatenate([p.pcm for p in parts]), parts[0].sample_rate, RATE)

        with ThreadPoolExecutor(max_workers=1) as pool:  # callable from a running loop
            return pool.submit(asyncio.run, run()).result()

    return speak


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


class Whisper:
    """``asr.transcribe`` that says when no transcription is running."""

    def __init__(self, asr: WhisperASR) -> None:
        self.asr, self.busy, self.idle = asr, 0, asyncio.Event()
        self.idle.set()

    async def transcribe(self, audio: AudioChunk) -> Transcript:
        self.busy += 1
        self.idle.clear()
        try:
            return await self.asr.transcribe(audio)
        finally:
            self.busy -= 1
            if not self.busy:
                self.idle.set()


async def played(pcm: np.ndarray, fed: list[int], whisper: Whisper) -> AsyncIterator[AudioChunk]:
    """The audio in 20 ms chunks, held while Whisper works; ``fed`` counts samples sent."""
    for i in range(0, len(pcm), STEP):
        await whisper.idle.wait()
        chunk = pcm[i : i + STEP]
        fed[0] += len(chunk)
        yield AudioChunk(pcm=chunk, sample_rate=RATE)
        await asyncio.sleep(0)


async def first_turn(asr: WhisperASR, pcm: np.ndarray) -> tuple[TurnEnded, float, int]:
    """The first TurnEnded, the seconds of audio fed when it came, and early ends."""
    whisper = Whisper(asr)
    eager = EagerTurns(TurnDetector(SileroVAD.load(), OPTIONS), whisper.transcribe)
    fed = [0]
    async for event in eager.run(played(pcm, fed, whisper)):
        if isinstance(event, TurnEnded):
            return event, fed[0] / RATE, eager.ended_early
    raise AssertionError("no turn ended")


@pytest.mark.slow
async def test_a_finished_sentence_ends_the_turn_at_the_pause(asr, say) -> None:
    speech = say("Hello, how are you today?")
    pcm = np.concatenate([silence(0.5), speech, silence(2.0)])
    turn, at, early = await first_turn(asr, pcm)
    # Ended by the pause's words, with 0.3 s of silence (+ a frame), not 1.5 s.
    assert early == 1 and at - turn.end < 0.5
    assert turn.transcript is not None and "how are you" in turn.transcript.text.lower()
    assert turn.transcript.start == turn.start and turn.transcript.end == turn.end


@pytest.mark.slow
async def test_an_unfinished_sentence_waits_and_keeps_its_words(asr, say) -> None:
    speech = say("Yesterday I walked with my dog to the")
    pcm = np.concatenate([silence(0.5), speech, silence(2.0)])
    turn, at, early = await first_turn(asr, pcm)
    assert early == 0
    assert at - turn.end >= 1.45  # the whole min_silence_ms (to a 32 ms frame)
    assert turn.transcript is not None and "dog" in turn.transcript.text.lower()


@pytest.mark.slow
async def test_speech_after_a_pause_joins_the_turn(asr, say) -> None:
    first, second = say("I would like to tell you about"), say("my cat, Tiger.")
    pcm = np.concatenate([silence(0.5), first, silence(0.9), second, silence(2.0)])
    turn, _at, early = await first_turn(asr, pcm)
    assert early == 1 and turn.transcript is not None
    words = turn.transcript.text.lower()  # one turn, not ended at the first pause
    assert "tell you" in words and "cat" in words


def test_a_plain_detector_reports_the_pause_once_with_the_turns_audio(say) -> None:
    speech = say("Hello, how are you today?")
    detector = TurnDetector(SileroVAD.load(), VADOptions(min_silence_ms=700, pause_ms=300))
    events = []
    for i in range(0, len(pcm := np.concatenate([silence(0.5), speech, silence(1.5)])), STEP):
        events += detector.push(pcm[i : i + STEP])
    pauses = [e for e in events if isinstance(e, SpeechPaused)]
    (ended,) = [e for e in events if isinstance(e, TurnEnded)]
    assert len(pauses) == 1 and ended.transcript is None
    assert pauses[0].audio.pts == ended.audio.pts
    assert np.array_equal(pauses[0].audio.pcm, ended.audio.pcm)  # the same span and samples


@pytest.mark.parametrize(
    ("text", "finished"),
    [
        ("Hello, how are you today?", True),
        ("Thank you.", True),
        ("I fell in the kitchen!", True),
        ("My cat is called...", False),
        ("Yesterday I walked to the.", False),
        ("I went out and", False),
        ("", False),
        ("Could you tell me about", False),
        ("I would like to tell you about.", False),
    ],
)
def test_finished_sentence(text: str, finished: bool) -> None:
    assert finished_sentence(text) is finished


def test_a_pause_must_be_shorter_than_the_silence() -> None:
    with pytest.raises(ValueError, match="pause_ms"):
        EagerTurns(TurnDetector(SileroVAD.load(), VADOptions(min_silence_ms=300)), None)  # type: ignore[arg-type]
