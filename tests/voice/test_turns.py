"""EagerTurns: real Silero and Whisper tiny.en on Piper speech, fed at 2x real time.

The silence a turn would wait is long (``min_silence_ms`` 5 s) so that a turn that
ends early can only have ended at the pause, however loaded the machine: Whisper on
2 s of speech took 0.2 s here unloaded and up to 0.9 s at a load average of 14.
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
from voice.types import AudioChunk
from voice.vad import SileroVAD, SpeechPaused, TurnDetector, TurnEnded, VADOptions

RATE = 16_000
OPTIONS = VADOptions(min_silence_ms=5000, pause_ms=300)
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


async def played(pcm: np.ndarray, fed: list[int]) -> AsyncIterator[AudioChunk]:
    """The audio in 20 ms chunks at twice real time; ``fed`` counts the samples sent."""
    for i in range(0, len(pcm), STEP):
        chunk = pcm[i : i + STEP]
        fed[0] += len(chunk)
        yield AudioChunk(pcm=chunk, sample_rate=RATE)
        await asyncio.sleep(STEP / RATE / 2)


async def turns(asr: WhisperASR, pcm: np.ndarray) -> tuple[list[TurnEnded], list[float], int]:
    """Every TurnEnded, the seconds of audio fed when each came, and early ends."""
    eager = EagerTurns(TurnDetector(SileroVAD.load(), OPTIONS), asr.transcribe)
    fed = [0]
    ended, at = [], []
    async for event in eager.run(played(pcm, fed)):
        if isinstance(event, TurnEnded):
            ended.append(event)
            at.append(fed[0] / RATE)
    return ended, at, eager.ended_early


@pytest.mark.slow
async def test_a_finished_sentence_ends_the_turn_at_the_pause(asr, say) -> None:
    speech = say("Hello, how are you today?")
    pcm = np.concatenate([silence(0.5), speech, silence(5.5)])
    ended, at, early = await turns(asr, pcm)
    assert early == 1 and len(ended) == 1
    turn = ended[0]
    assert turn.transcript is not None and "how are you" in turn.transcript.text.lower()
    assert at[0] - turn.end < 4.0  # not the 5 s of silence min_silence_ms asks for
    assert turn.transcript.start == turn.start and turn.transcript.end == turn.end


@pytest.mark.slow
async def test_an_unfinished_sentence_waits_and_keeps_its_words(asr, say) -> None:
    speech = say("Yesterday I walked with my dog to the")
    pcm = np.concatenate([silence(0.5), speech, silence(5.5)])
    ended, at, early = await turns(asr, pcm)
    assert early == 0 and len(ended) == 1
    assert at[0] - ended[0].end >= 4.9  # the whole min_silence_ms (to a 32 ms frame)
    assert ended[0].transcript is not None and "dog" in ended[0].transcript.text.lower()


@pytest.mark.slow
async def test_speech_after_a_pause_joins_the_turn(asr, say) -> None:
    first, second = say("I would like to tell you about"), say("my cat, Tiger.")
    pcm = np.concatenate([silence(0.5), first, silence(0.9), second, silence(5.5)])
    ended, _at, early = await turns(asr, pcm)
    assert len(ended) == 1 and early == 1
    assert ended[0].transcript is not None
    words = ended[0].transcript.text.lower()
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
    ],
)
def test_finished_sentence(text: str, finished: bool) -> None:
    assert finished_sentence(text) is finished


def test_a_pause_must_be_shorter_than_the_silence() -> None:
    with pytest.raises(ValueError, match="pause_ms"):
        EagerTurns(TurnDetector(SileroVAD.load(), VADOptions(min_silence_ms=300)), None)  # type: ignore[arg-type]
