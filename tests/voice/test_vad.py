"""Silero VAD + end-of-turn detection on real speech."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import espeak_wav, speech_bounds
from voice.audio import read_audio
from voice.errors import AudioInputError
from voice.types import AudioChunk
from voice.vad import (
    SileroVAD,
    SpeechProgress,
    SpeechStarted,
    TurnDetector,
    TurnEnded,
    VADOptions,
)

RATE = 16_000


@pytest.fixture(scope="module")
def two_turns(tmp_path_factory):
    """Two espeak turns separated by 2 s of silence, with their true speech bounds."""
    folder = tmp_path_factory.mktemp("vad")
    first = read_audio(espeak_wav("Hello there, how are you doing today?", folder / "a.wav"))
    second = read_audio(espeak_wav("Please tell me a story about the sea.", folder / "b.wav"))
    lead, gap, tail = (np.zeros(int(s * RATE), np.float32) for s in (0.7, 2.0, 1.5))
    pcm = np.concatenate([lead, first.pcm, gap, second.pcm, tail])
    truth = [
        speech_bounds(first, 0.7),
        speech_bounds(second, 0.7 + first.duration + 2.0),
    ]
    return AudioChunk(pcm=pcm, sample_rate=RATE), truth


def feed(detector: TurnDetector, pcm: np.ndarray, step: int = 1600) -> list:
    events = []
    for i in range(0, len(pcm), step):
        events += detector.push(pcm[i : i + step])
    return events + detector.flush()


def test_finds_each_turn_within_200ms(two_turns):
    audio, truth = two_turns
    events = feed(TurnDetector(SileroVAD.load(), VADOptions(min_silence_ms=600)), audio.pcm)
    turns = [e for e in events if isinstance(e, TurnEnded)]
    assert len(turns) == 2
    for turn, (start, end) in zip(turns, truth, strict=True):
        assert abs(turn.start - start) <= 0.2, (turn.start, start)
        assert abs(turn.end - end) <= 0.2, (turn.end, end)
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    assert [s.at for s in starts] == [t.start for t in turns]


def test_turn_audio_holds_the_speech_with_padding(two_turns):
    audio, _ = two_turns
    opts = VADOptions(min_silence_ms=600, speech_pad_ms=200)
    turns = [
        e for e in feed(TurnDetector(SileroVAD.load(), opts), audio.pcm) if isinstance(e, TurnEnded)
    ]
    for turn in turns:
        assert turn.audio.sample_rate == RATE
        assert turn.audio.pts == pytest.approx(turn.start - 0.2, abs=1e-6)
        expected = audio.pcm[
            int(turn.audio.pts * RATE) : int(turn.audio.pts * RATE) + len(turn.audio.pcm)
        ]
        np.testing.assert_array_equal(turn.audio.pcm, expected)


def test_chunk_size_does_not_change_the_result(two_turns):
    audio, _ = two_turns
    a = [
        e.start
        for e in feed(TurnDetector(SileroVAD.load()), audio.pcm, 160)
        if isinstance(e, TurnEnded)
    ]
    b = [
        e.start
        for e in feed(TurnDetector(SileroVAD.load()), audio.pcm, 16000)
        if isinstance(e, TurnEnded)
    ]
    assert a == b and len(a) == 2


def test_long_silence_makes_one_turn_short_pause_does_not_split(two_turns):
    audio, _ = two_turns
    # 2 s gap < 2.5 s min silence: the two sentences form one turn.
    events = feed(TurnDetector(SileroVAD.load(), VADOptions(min_silence_ms=2500)), audio.pcm)
    assert len([e for e in events if isinstance(e, TurnEnded)]) == 1


def test_silence_and_noise_make_no_turn():
    rng = np.random.default_rng(0)
    quiet = np.concatenate(
        [np.zeros(RATE * 2, np.float32), rng.normal(0, 0.003, RATE * 2).astype(np.float32)]
    )
    assert feed(TurnDetector(SileroVAD.load()), quiet) == []


def test_min_speech_ignores_a_short_burst(two_turns):
    audio, (first, _) = two_turns
    burst = audio.pcm[int(first[0] * RATE) : int((first[0] + 0.12) * RATE)]
    pcm = np.concatenate([np.zeros(RATE, np.float32), burst, np.zeros(RATE, np.float32)])
    assert feed(TurnDetector(SileroVAD.load(), VADOptions(min_speech_ms=400)), pcm) == []


def test_progress_snapshots_while_speaking(two_turns):
    audio, _ = two_turns
    events = feed(TurnDetector(SileroVAD.load(), VADOptions(progress_ms=500)), audio.pcm)
    progress = [e for e in events if isinstance(e, SpeechProgress)]
    assert progress, "expected partial snapshots during 2 s of speech"
    assert all(len(p.audio.pcm) > 0.4 * RATE for p in progress)


def test_max_turn_cuts_a_monologue(two_turns):
    audio, _ = two_turns
    events = feed(
        TurnDetector(SileroVAD.load(), VADOptions(max_turn_s=1.0, min_silence_ms=600)), audio.pcm
    )
    turns = [e for e in events if isinstance(e, TurnEnded)]
    assert len(turns) >= 3
    assert all(t.end - t.start <= 1.05 for t in turns)


async def test_stage_resamples_48k_stream(two_turns):
    from voice.audio import resample

    audio, truth = two_turns
    pcm48 = resample(audio.pcm, RATE, 48_000)

    async def src():
        for i in range(0, len(pcm48), 960):  # 20 ms WebRTC frames
            yield AudioChunk(pcm=pcm48[i : i + 960], sample_rate=48_000, pts=i / 48_000)

    events = [e async for e in TurnDetector(SileroVAD.load()).run(src())]
    turns = [e for e in events if isinstance(e, TurnEnded)]
    assert len(turns) == 2
    assert abs(turns[0].start - truth[0][0]) <= 0.2


def test_rejects_stereo():
    with pytest.raises(AudioInputError):
        TurnDetector(SileroVAD.load()).push(np.zeros((100, 2), np.float32))
