"""The embedded Whisper tiny.en on real synthetic speech."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.conftest import espeak_wav, piper_speech, wer
from voice.asr import ASROptions, WhisperASR, embedded_model_path, resolve_model
from voice.audio import read_audio
from voice.digits import parse_digits
from voice.errors import AudioInputError, ModelNotFoundError
from voice.types import AudioChunk
from voice.vad import SileroVAD, SpeechProgress, TurnDetector, VADOptions

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def test_embedded_model_is_found_offline():
    path = embedded_model_path()
    assert path is not None and (path / "model.bin").is_file()
    assert resolve_model("") == str(path)


def test_piper_sentence_wer(whisper, piper_tts):
    heard = whisper.transcribe_sync(piper_speech(piper_tts, SENTENCE))
    assert heard.language == "en"
    assert wer(SENTENCE, heard.text) <= 0.25, heard.text


def test_espeak_sentence_wer(whisper, tmp_path):
    text = "Please open the window and let the fresh air in."
    heard = whisper.transcribe_sync(read_audio(espeak_wav(text, tmp_path / "s.wav", speed=140)))
    assert wer(text, heard.text) <= 0.25, heard.text


def test_six_digit_codes_nine_of_ten(whisper, piper_tts):
    rng = random.Random(4729)
    codes = ["".join(rng.choice("0123456789") for _ in range(6)) for _ in range(10)]
    right = []
    for code in codes:
        spoken = "My code is " + ", ".join(code) + "."
        heard = whisper.transcribe_sync(piper_speech(piper_tts, spoken))
        right.append(parse_digits(heard.text) == code)
    assert sum(right) >= 9, list(zip(codes, right, strict=True))


def test_rejects_audio_at_another_rate(whisper):
    with pytest.raises(AudioInputError, match="16 kHz"):
        whisper.transcribe_sync(AudioChunk(pcm=np.zeros(8000, np.float32), sample_rate=8000))


def test_silence_gives_empty_or_short_text(whisper):
    heard = whisper.transcribe_sync(AudioChunk(pcm=np.zeros(16000, np.float32), sample_rate=16000))
    assert len(heard.text.split()) <= 2


def test_missing_local_model_says_what_to_do(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model.bin"):
        resolve_model(str(tmp_path))


def test_uncached_hub_model_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not on this machine"):
        WhisperASR.load(ASROptions(model="small.en"))


def test_word_timestamps(piper_tts):
    asr = WhisperASR.load(ASROptions(word_timestamps=True))
    clip = piper_speech(piper_tts, "Good morning to you.")
    heard = asr.transcribe_sync(clip)
    assert heard.words and all(0 <= w.start <= w.end <= clip.duration + 0.1 for w in heard.words)


async def test_stage_gives_partials_then_final(whisper, piper_tts):
    speech = piper_speech(
        piper_tts, "I went to the market this morning and bought some apples and pears."
    )
    pcm = np.concatenate([np.zeros(8000, np.float32), speech.pcm, np.zeros(16000, np.float32)])

    async def audio():
        for i in range(0, len(pcm), 1600):
            yield AudioChunk(pcm=pcm[i : i + 1600], sample_rate=16_000)

    detector = TurnDetector(SileroVAD.load(), VADOptions(progress_ms=700))

    async def slow_events():
        import asyncio

        async for event in detector.run(audio()):
            if isinstance(event, SpeechProgress):
                await asyncio.sleep(0.5)  # let the partial decode finish, as in real time
            yield event

    out = [t async for t in whisper.run(slow_events())]
    finals = [t for t in out if t.is_final]
    partials = [t for t in out if not t.is_final]
    assert len(finals) == 1 and "market" in finals[0].text.lower()
    assert partials and out[-1].is_final
