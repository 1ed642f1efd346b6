"""The audio feature contract (avatar.neural_audio): log-mel rows, alignment, streaming, visemes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from faster_whisper.feature_extractor import FeatureExtractor

from avatar.neural_audio import (
    MEL_PER_FRAME,
    N_MELS,
    NEUTRAL,
    SAMPLE_RATE,
    SILENCE,
    VISEME_NAMES,
    AudioFeatureError,
    StreamingMel,
    frame_rows,
    hann_window,
    log_mel,
    log_mel_torch,
    mel_filterbank,
    mel_for_frames,
    viseme_id,
    visemes_per_frame,
)
from voice.types import Timing


def _noise_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise with a slow loudness envelope, so rows differ a lot from one another."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    envelope = 0.5 + 0.5 * np.sin(np.linspace(0, 9 * np.pi, n)) ** 2
    return (rng.standard_normal(n) * 0.1 * envelope).astype(np.float32)


def test_filters_are_slaney_mel_as_in_whisper():
    # faster-whisper ships its own numpy port of librosa's Slaney filters: an independent check.
    theirs = FeatureExtractor.get_mel_filters(SAMPLE_RATE, 400, n_mels=80)
    ours = mel_filterbank()
    assert ours.shape == (80, 201) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-7 * theirs.max() + 1e-9


def test_log_mel_matches_an_independent_stft():
    pcm = _noise_speech(2.0)
    mel = log_mel(pcm, SAMPLE_RATE)
    assert mel.shape == (len(pcm) // 160, N_MELS) and mel.dtype == np.float32
    # The contract: 120 zeros each side, 400-sample periodic Hann windows every 160 samples.
    padded = np.pad(pcm.astype(np.float64), (120, 120))
    spec = FeatureExtractor.stft(
        padded, 400, 160, window=hann_window().astype(np.float64), center=False,
        return_complex=True,
    )  # fmt: skip
    power = np.abs(spec[:, : mel.shape[0]]) ** 2
    expected = np.log(np.maximum(mel_filterbank().astype(np.float64) @ power, 1e-5)).T
    assert np.abs(mel - expected).max() < 1e-4
    assert np.isclose(log_mel(np.zeros(1600, np.float32), SAMPLE_RATE), np.log(1e-5)).all()


def test_rows_are_centred_on_their_hop_and_frames_own_four_rows():
    n_frames = 12
    pcm = np.zeros(n_frames * 640, np.float32)
    # An impulse at sample 160 r + 80 is the centre of row r: that row is the loudest.
    for row in (5, 17, 30):
        click = np.zeros_like(pcm)
        click[160 * row + 80] = 1.0
        energy = np.exp(log_mel(click, SAMPLE_RATE)).sum(axis=1)
        assert int(np.argmax(energy)) == row
    # A tone filling exactly frame 7's 40 ms lights up rows 28..31, and only partly the
    # neighbours (whose windows reach 120 samples into it).
    t = np.arange(640) / SAMPLE_RATE
    pcm[7 * 640 : 8 * 640] = 0.5 * np.sin(2 * np.pi * 440 * t)
    mel = mel_for_frames(pcm, SAMPLE_RATE, n_frames)
    assert mel.shape == (4 * n_frames, N_MELS) and frame_rows(7) == slice(28, 32)
    energy = np.exp(mel).sum(axis=1)
    inside = energy[frame_rows(7)]
    assert inside.min() > 20 * max(energy[25], energy[34])
    per_frame = energy.reshape(n_frames, MEL_PER_FRAME).mean(axis=1)
    assert int(np.argmax(per_frame)) == 7


@pytest.mark.parametrize("samples", [0, 100, 639, 640, 6400, 7000])
def test_mel_for_frames_pads_or_cuts_to_four_rows_per_frame(samples):
    pcm = _noise_speech(1.0)[:samples]
    for n_frames in (0, 1, 10):
        mel = mel_for_frames(pcm, SAMPLE_RATE, n_frames)
        assert mel.shape == (4 * n_frames, N_MELS)
    full = mel_for_frames(_noise_speech(1.0), SAMPLE_RATE, 25)
    assert np.array_equal(full, log_mel(_noise_speech(1.0), SAMPLE_RATE))
    # Cutting never changes the rows whose windows stay inside the kept audio.
    cut = mel_for_frames(_noise_speech(1.0), SAMPLE_RATE, 10)
    assert np.array_equal(cut[:39], full[:39])


def test_streaming_gives_the_same_rows_as_one_shot():
    pcm = _noise_speech(3.0, seed=1)
    whole = log_mel(pcm, SAMPLE_RATE)
    rng = np.random.default_rng(3)
    for sizes in ("random", "ones", "all"):
        stream = StreamingMel()
        rows, i = [], 0
        while i < len(pcm):
            if sizes == "random":
                n = int(rng.integers(1, 1200))
            elif sizes == "ones":
                n = 1 if i < 2000 else 3000
            else:
                n = len(pcm)
            rows.append(stream.push(pcm[i : i + n]))
            i = stream.samples_pushed
            # Lookahead contract: row r is out as soon as samples up to 160 r + 280 arrived.
            assert stream.rows_emitted == max(0, min((i - 280) // 160 + 1, i // 160))
        rows.append(stream.flush())
        streamed = np.concatenate(rows)
        assert streamed.shape == whole.shape
        assert np.abs(streamed - whole).max() <= 1e-6
        assert np.array_equal(streamed, whole), "expected bit-identical rows"
    with pytest.raises(AudioFeatureError, match="after flush"):
        stream.push(pcm[:160])
    stream.reset()
    again = np.concatenate([stream.push(pcm[:8000]), stream.flush()])
    assert np.array_equal(again, log_mel(pcm[:8000], SAMPLE_RATE))


def test_torch_variant_agrees_with_numpy():
    batch = np.stack([_noise_speech(1.5, seed=s) for s in (4, 5)])
    ours = np.stack([log_mel(x, SAMPLE_RATE) for x in batch])
    theirs = log_mel_torch(torch.from_numpy(batch), SAMPLE_RATE)
    assert theirs.shape == (2, 150, N_MELS) and theirs.dtype == torch.float32
    assert np.abs(theirs.numpy() - ours).max() < 1e-3
    single = log_mel_torch(torch.from_numpy(batch[0]), SAMPLE_RATE)
    assert single.shape == (150, N_MELS)
    assert log_mel_torch(torch.zeros(2, 100), SAMPLE_RATE).shape == (2, 0, N_MELS)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_wrong_sample_rate_is_a_clear_error(rate):
    pcm = np.zeros(rate, np.float32)
    calls = (
        lambda: log_mel(pcm, rate),
        lambda: mel_for_frames(pcm, rate, 25),
        lambda: StreamingMel(rate),
        lambda: log_mel_torch(torch.zeros(rate), rate),
    )
    for call in calls:
        with pytest.raises(AudioFeatureError, match=rf"needs 16000 Hz audio, got {rate} Hz"):
            call()


def test_other_bad_input_is_a_clear_error():
    with pytest.raises(AudioFeatureError, match="float audio"):
        log_mel(np.zeros(1600, np.int16), SAMPLE_RATE)
    with pytest.raises(AudioFeatureError, match="mono"):
        log_mel(np.zeros((1600, 2), np.float32), SAMPLE_RATE)
    with pytest.raises(AudioFeatureError, match="25 fps"):
        mel_for_frames(np.zeros(1600, np.float32), SAMPLE_RATE, 4, fps=30)
    with pytest.raises(AudioFeatureError, match="float tensor"):
        log_mel_torch(torch.zeros(1600, dtype=torch.int16), SAMPLE_RATE)
    assert log_mel(np.zeros((1, 1600), np.float32), SAMPLE_RATE).shape == (10, N_MELS)


def test_viseme_ids_cover_all_sixteen_classes():
    assert len(VISEME_NAMES) == 16
    examples = {
        "": 0, "p": 1, "f": 2, "θ": 3, "t": 4, "k": 5, "ʃ": 6, "s": 7, "n": 8, "ɹ": 9,
        "ɑː": 10, "ɛ": 11, "iː": 12, "oʊ": 13, "uː": 14, "ə": 15,
    }  # fmt: skip
    assert sorted(examples.values()) == list(range(16))
    for symbol, expected in examples.items():
        assert viseme_id(symbol) == expected, symbol
    assert viseme_id("ˈaɪ") == 10  # a diphthong takes its first sound; stress marks ignored
    assert viseme_id("M") == 1 and viseme_id("UW1") == 14  # ARPAbet
    assert viseme_id("_") == SILENCE and viseme_id("☃") == NEUTRAL


def test_visemes_per_frame_takes_the_longest_sound_of_each_frame():
    timings = [
        Timing("p", "phoneme", 0.00, 0.05),  # frame 0 and 1/4 of frame 1
        Timing("a", "phoneme", 0.05, 0.13),  # 3/4 of frame 1, frame 2, 1/4 of frame 3
        Timing("s", "phoneme", 0.13, 0.15),  # half of frame 3: a tie with silence → "SS"
        Timing("word", "word", 0.0, 0.15),  # ignored: phonemes are known
    ]
    ids = visemes_per_frame(timings, 6, fps=25)
    assert ids.dtype == np.int64 and ids.tolist() == [1, 10, 10, 7, 0, 0]
    assert visemes_per_frame([], 3).tolist() == [0, 0, 0]
    # Word timings alone are spread over guessed sounds: "map" opens with closed lips.
    words = visemes_per_frame([Timing("map", "word", 0.0, 0.24)], 8)
    assert words[0] == 1 and 10 in words.tolist() and words[-1] == 0
    with pytest.raises(AudioFeatureError, match="n_frames"):
        visemes_per_frame(timings, -1)


def test_visemes_from_real_espeak_timings():
    from voice.tts.espeak import EspeakTTS

    async def speak():
        return [c async for c in EspeakTTS.load().synthesize("Peter picked a peck of peppers.")]

    chunk = asyncio.run(speak())[0]
    n_frames = int(np.ceil(chunk.duration * 25)) + 5
    ids = visemes_per_frame(chunk.timings, n_frames)
    assert ids.min() >= 0 and ids.max() <= 15
    assert ids[-3:].tolist() == [0, 0, 0], "frames after the speech are silence"
    lips = [t for t in chunk.timings if t.kind == "phoneme" and t.symbol.strip("ˈˌ") == "p"]
    assert len(lips) >= 4
    for t in lips:  # the frame holding most of each "p" shows pressed lips
        if t.end - t.start >= 0.04:
            middle = int((t.start + t.end) / 2 * 25)
            assert ids[middle] == 1, (t, ids[middle])
    assert len(set(ids.tolist())) >= 5
