"""The audio feature contract of the neural generator: log-mel rows and visemes per frame.

Everything the neural models read from speech comes through this module, in one form:

* **Input**: mono float32 PCM at exactly 16 kHz (:data:`SAMPLE_RATE`). Any other rate
  raises :class:`AudioFeatureError`; resample first (``soxr.resample(pcm, rate, 16000)``).
* **Frames**: 400-sample windows (25 ms, periodic Hann) every 160 samples (10 ms), so
  100 rows per second. Row ``r`` is centred on sample ``160 * r + 80``, the middle of
  the 10 ms hop ``[160 r, 160 (r + 1))``: the signal is padded with 120 zeros at the
  start and 120 zeros at the end, and row ``r`` reads padded samples
  ``[160 r, 160 r + 400)``. A signal of ``L`` samples gives ``L // 160`` rows (a
  trailing partial hop gives none).
* **Spectrum**: power (``|rfft|²``, 201 bins), then 80 mel bands on the **Slaney** mel
  scale with Slaney area normalisation from 0 to 8 kHz (the same filters as
  ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)`` and Whisper's), then the
  natural log of ``max(mel, 1e-5)``. Output: float32 ``[T, 80]``.
* **Video alignment**: at 25 fps a video frame lasts 640 samples (40 ms) = 4 rows.
  Frame ``i`` shows the audio ``[640 i, 640 (i + 1))`` and owns rows ``4i .. 4i+3``
  (:func:`frame_rows`); :func:`mel_for_frames` cuts or zero-pads the audio to exactly
  ``640 N`` samples so ``N`` frames get exactly ``4 N`` rows. The last frame's rows look
  120 samples (7.5 ms) past its end, into the zero padding when the audio stops there.
* **Streaming**: :class:`StreamingMel` takes audio in pieces of any size and emits the
  same rows as :func:`log_mel` as soon as the audio each needs has arrived (row ``r``
  needs samples up to ``160 r + 280``); :meth:`StreamingMel.flush` pads the end.

Visemes: :func:`visemes_per_frame` turns phoneme (or word) timings into one of 16
viseme ids per video frame (:data:`VISEME_NAMES`; 0 is silence), by the largest
overlap with each frame's interval.

Typical use::

    mel = mel_for_frames(pcm16k, SAMPLE_RATE, n_frames)      # [4 N, 80]
    rows_of_frame_7 = mel[frame_rows(7)]                      # [4, 80]
    ids = visemes_per_frame(speech.timings, n_frames, fps=25)  # [N] int64 in 0..15
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from avatar.errors import AvatarError
from avatar.procedural.visemes import plain_ipa, word_sounds
from avatar.types import TimingLike

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16_000
N_FFT = 400
WIN_LENGTH = 400
HOP_LENGTH = 160
N_MELS = 80
F_MIN = 0.0
F_MAX = 8_000.0
LOG_FLOOR = 1e-5
ROWS_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
VIDEO_FPS = 25
MEL_PER_FRAME = ROWS_PER_SECOND // VIDEO_FPS  # 4
SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS  # 640
PAD = (N_FFT - HOP_LENGTH) // 2  # 120 zeros before (and after) the signal


class AudioFeatureError(AvatarError, ValueError):
    """Audio that the feature contract cannot take (wrong rate, not mono, not float)."""


# ---------------------------------------------------------------- filters


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    mel = hz / (200.0 / 3)
    log_t = hz >= 1000.0
    return np.where(log_t, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27), mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    hz = mel * (200.0 / 3)
    log_t = mel >= 15.0
    return np.where(log_t, 1000.0 * np.exp((np.log(6.4) / 27) * (mel - 15.0)), hz)


@functools.cache
def _filters64() -> np.ndarray:
    fft_freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    mel_points = np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), N_MELS + 2)
    freqs = _mel_to_hz(mel_points)
    fdiff = np.diff(freqs)
    ramps = freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (freqs[2 : N_MELS + 2] - freqs[:N_MELS]))[:, None]  # Slaney area norm
    weights.setflags(write=False)
    return weights


@functools.cache
def _window64() -> np.ndarray:
    n = np.arange(WIN_LENGTH, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / WIN_LENGTH)  # periodic Hann
    window.setflags(write=False)
    return window


def mel_filterbank() -> np.ndarray:
    """The 80 Slaney mel filters over the 201 power-spectrum bins, float32 ``[80, 201]``."""
    return _filters64().astype(np.float32)


def hann_window() -> np.ndarray:
    """The periodic Hann window of 400 samples, float32 (as ``torch.hann_window(400)``)."""
    return _window64().astype(np.float32)


# ---------------------------------------------------------------- checks


def _check_rate(sample_rate: int, where: str) -> None:
    if sample_rate != SAMPLE_RATE:
        raise AudioFeatureError(
            f"{where} needs {SAMPLE_RATE} Hz audio, got {sample_rate} Hz: resample it first "
            f"(for example soxr.resample(pcm, {sample_rate}, {SAMPLE_RATE}))"
        )


def _check_pcm(pcm: np.ndarray, where: str) -> np.ndarray:
    data = np.asarray(pcm)
    if data.dtype.kind != "f":
        raise AudioFeatureError(
            f"{where} needs float audio in [-1, 1], got {data.dtype}: divide integer PCM by "
            "its full scale (32768 for int16)"
        )
    if data.ndim == 2 and 1 in data.shape:
        data = data.reshape(-1)
    if data.ndim != 1:
        raise AudioFeatureError(
            f"{where} needs mono audio of shape (samples,), got shape {data.shape}: "
            "average the channels first"
        )
    return data


# ---------------------------------------------------------------- one-shot


def _rows(padded: np.ndarray, count: int) -> np.ndarray:
    """``count`` rows from a padded signal whose row 0 starts at sample 0."""
    if count <= 0:
        return np.zeros((0, N_MELS), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:count]
    spectrum = np.fft.rfft(frames * _window64(), axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    mel = power @ _filters64().T
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)


def log_mel(pcm: np.ndarray, sample_rate: int) -> np.ndarray:
    """Log-mel rows of a whole signal (see the module doc for the exact contract).

    Args:
        pcm: mono float audio in [-1, 1], shape ``(samples,)``.
        sample_rate: must be 16000.

    Returns:
        float32 ``[len(pcm) // 160, 80]``. For video frames use :func:`mel_for_frames`.

    Raises:
        AudioFeatureError: wrong rate, integer samples or several channels.
    """
    _check_rate(sample_rate, "log_mel")
    data = _check_pcm(pcm, "log_mel").astype(np.float64)
    padded = np.concatenate([np.zeros(PAD), data, np.zeros(PAD)])
    return _rows(padded, len(data) // HOP_LENGTH)


def fit_to_frames(pcm: np.ndarray, n_frames: int) -> np.ndarray:
    """16 kHz audio cut or zero-padded to exactly ``n_frames`` video frames (640 each)."""
    wanted = n_frames * SAMPLES_PER_FRAME
    data = np.asarray(pcm, np.float32)[:wanted]
    return np.pad(data, (0, wanted - len(data)))


def mel_for_frames(
    pcm: np.ndarray, sample_rate: int, n_frames: int, fps: float = VIDEO_FPS
) -> np.ndarray:
    """Exactly 4 log-mel rows per 25 fps video frame: float32 ``[4 * n_frames, 80]``.

    The audio must start with frame 0; it is cut or zero-padded to ``640 * n_frames``
    samples. Frame ``i`` owns rows :func:`frame_rows` ``(i)``.

    Raises:
        AudioFeatureError: wrong rate or fps, bad audio, or a negative ``n_frames``.
    """
    if fps != VIDEO_FPS:
        raise AudioFeatureError(
            f"mel_for_frames needs {VIDEO_FPS} fps video (4 rows per frame), got {fps} fps: "
            "resample the video to 25 fps first"
        )
    if n_frames < 0:
        raise AudioFeatureError(f"mel_for_frames: n_frames={n_frames} must not be negative")
    _check_rate(sample_rate, "mel_for_frames")
    return log_mel(fit_to_frames(_check_pcm(pcm, "mel_for_frames"), n_frames), sample_rate)


def frame_rows(index: int) -> slice:
    """The mel rows of video frame ``index`` at 25 fps: ``slice(4 * index, 4 * index + 4)``."""
    return slice(MEL_PER_FRAME * index, MEL_PER_FRAME * (index + 1))


def log_mel_torch(pcm: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """:func:`log_mel` for a batch on any torch device (same contract, float32 maths).

    Args:
        pcm: ``[B, samples]`` or ``[samples]`` float audio at 16 kHz.
        sample_rate: must be 16000.

    Returns:
        ``[B, samples // 160, 80]`` (or ``[samples // 160, 80]`` for 1-D input), on
        ``pcm``'s device. Agrees with :func:`log_mel` to about 1e-3 in log units (float32
        FFT); use the numpy function where rows must match bit for bit.

    Raises:
        AudioFeatureError: wrong rate, integer tensor, or more than 2 dimensions.
    """
    import torch

    _check_rate(sample_rate, "log_mel_torch")
    if not torch.is_floating_point(pcm):
        raise AudioFeatureError(f"log_mel_torch needs a float tensor, got {pcm.dtype}")
    if pcm.dim() not in (1, 2):
        raise AudioFeatureError(
            f"log_mel_torch needs [samples] or [batch, samples], got shape {tuple(pcm.shape)}"
        )
    squeeze = pcm.dim() == 1
    x = pcm.reshape(1, -1) if squeeze else pcm
    x = x.float()
    count = x.shape[1] // HOP_LENGTH
    if count == 0:
        empty = x.new_zeros((x.shape[0], 0, N_MELS))
        return empty[0] if squeeze else empty
    padded = torch.nn.functional.pad(x, (PAD, PAD))
    window = torch.from_numpy(hann_window()).to(x.device)
    spec = torch.stft(
        padded,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        win_length=WIN_LENGTH,
        window=window,
        center=False,
        return_complex=True,
    )[..., :count]
    power = spec.real**2 + spec.imag**2  # [B, 201, T]
    filters = torch.from_numpy(mel_filterbank()).to(x.device)
    mel = torch.matmul(filters, power).transpose(1, 2)  # [B, T, 80]
    out = torch.log(torch.clamp(mel, min=LOG_FLOOR))
    return out[0] if squeeze else out


# ---------------------------------------------------------------- streaming


class StreamingMel:
    """Log-mel rows of a stream, emitted as soon as the audio they need has arrived.

    Feed it with :meth:`push` (any piece sizes, 16 kHz mono float); every call returns
    the rows that became complete. At the end of the stream call :meth:`flush` once for
    the last rows (they see the end's zero padding). Concatenated, the rows equal
    :func:`log_mel` of the whole signal. Call :meth:`reset` to start a new stream.

    Args:
        sample_rate: must be 16000.

    Raises:
        AudioFeatureError: from the constructor on a wrong rate; from :meth:`push` on
            bad audio or after :meth:`flush`.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        _check_rate(sample_rate, "StreamingMel")
        self.sample_rate = sample_rate
        self.reset()

    def reset(self) -> None:
        """Forget the stream; the next :meth:`push` starts a new one at row 0."""
        self._buffer = np.zeros(PAD, np.float64)  # padded signal from row `_next`'s start
        self._next = 0
        self._samples = 0
        self._flushed = False

    @property
    def rows_emitted(self) -> int:
        """How many rows :meth:`push` and :meth:`flush` have returned so far."""
        return self._next

    @property
    def samples_pushed(self) -> int:
        """How many samples the stream has received."""
        return self._samples

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Add audio; returns the newly complete rows, float32 ``[k, 80]`` (k may be 0)."""
        if self._flushed:
            raise AudioFeatureError("StreamingMel.push after flush: call reset() first")
        data = _check_pcm(pcm, "StreamingMel.push").astype(np.float64)
        self._buffer = np.concatenate([self._buffer, data])
        self._samples += len(data)
        # Row r reads padded samples [160 r, 160 r + 400); the buffer starts at row _next.
        ready = (len(self._buffer) - N_FFT) // HOP_LENGTH + 1 if len(self._buffer) >= N_FFT else 0
        ready = min(ready, self._samples // HOP_LENGTH - self._next)
        return self._take(ready)

    def flush(self) -> np.ndarray:
        """End the stream: returns its last rows (with the end's zero padding)."""
        if self._flushed:
            return np.zeros((0, N_MELS), np.float32)
        self._flushed = True
        self._buffer = np.concatenate([self._buffer, np.zeros(PAD)])
        return self._take(self._samples // HOP_LENGTH - self._next)

    def _take(self, count: int) -> np.ndarray:
        if count <= 0:
            return np.zeros((0, N_MELS), np.float32)
        rows = _rows(self._buffer, count)
        self._buffer = self._buffer[count * HOP_LENGTH :]
        self._next += count
        return rows


# ---------------------------------------------------------------- visemes

VISEME_NAMES: tuple[str, ...] = (
    "sil",  # 0 silence, pauses
    "PP",  # 1 p b m: lips pressed
    "FF",  # 2 f v: lower lip on upper teeth
    "TH",  # 3 θ ð: tongue between the teeth
    "DD",  # 4 t d ɾ
    "kk",  # 5 k g ŋ x
    "CH",  # 6 ʃ ʒ tʃ dʒ: lips pushed forward
    "SS",  # 7 s z
    "nn",  # 8 n l
    "RR",  # 9 ɹ r and r-coloured vowels ɚ ɝ ɜ
    "aa",  # 10 open vowels a ɑ æ ʌ ɐ
    "E",  # 11 ɛ e
    "ih",  # 12 ɪ i ɨ j: lips spread
    "oh",  # 13 o ɔ ɒ: rounded, mid-open
    "ou",  # 14 u ʊ w y ɯ: rounded, nearly closed
    "neutral",  # 15 ə h ʔ and any sound not in this table
)
"""The 16 viseme classes (after the Oculus/Meta set of 15, plus "neutral" for the rest)."""

SILENCE = 0
NEUTRAL = 15

_CLASSES: dict[str, int] = {
    **dict.fromkeys(("p", "b", "m"), 1),
    **dict.fromkeys(("f", "v"), 2),
    **dict.fromkeys(("θ", "ð"), 3),
    **dict.fromkeys(("t", "d", "ɾ"), 4),
    **dict.fromkeys(("k", "g", "ɡ", "ŋ", "x"), 5),
    **dict.fromkeys(("ʃ", "ʒ", "tʃ", "dʒ", "ʧ", "ʤ"), 6),
    **dict.fromkeys(("s", "z"), 7),
    **dict.fromkeys(("n", "l", "ɫ"), 8),
    **dict.fromkeys(("ɹ", "r", "ɚ", "ɝ", "ɜ"), 9),
    **dict.fromkeys(("a", "ɑ", "æ", "ä", "ɐ", "ʌ"), 10),
    **dict.fromkeys(("ɛ", "e"), 11),
    **dict.fromkeys(("ɪ", "i", "ɨ", "j"), 12),
    **dict.fromkeys(("o", "ɔ", "ɒ"), 13),
    **dict.fromkeys(("u", "ʊ", "w", "ʍ", "y", "ɯ"), 14),
    **dict.fromkeys(("ə", "h", "ʔ"), 15),
}
_CLASS_KEYS = sorted(_CLASSES, key=len, reverse=True)
_SILENT = {"", "_", "#", "sil", "sp", "pau", "spn"}


def viseme_id(symbol: str) -> int:
    """The viseme id (0..15) of one phoneme symbol (IPA as Piper/eSpeak write it, or ARPAbet).

    A diphthong takes the class of its first sound; stress and length marks are
    ignored; a pause symbol ("", "_", "sil", "sp") is silence; anything unknown is
    ``NEUTRAL`` (15).
    """
    if symbol.strip().lower() in _SILENT:
        return SILENCE
    text = plain_ipa(symbol)
    if not text:
        return SILENCE
    for i in range(len(text)):
        for key in _CLASS_KEYS:
            if text.startswith(key, i):
                return _CLASSES[key]
    return NEUTRAL


def _sounds(timings: Iterable[TimingLike]) -> list[tuple[float, float, int]]:
    items = list(timings)
    phonemes = [t for t in items if t.kind == "phoneme"]
    if phonemes:
        return [(t.start, t.end, viseme_id(t.symbol)) for t in phonemes]
    out: list[tuple[float, float, int]] = []
    for t in items:  # word timings only: spread each word's time over its guessed sounds
        if t.kind != "word":
            continue
        sounds = word_sounds(t.symbol)
        total = sum(w for _, w in sounds) or 1.0
        start, span = t.start, max(t.end - t.start, 0.0)
        for ipa, weight in sounds:
            end = start + span * weight / total
            out.append((start, end, viseme_id(ipa)))
            start = end
    return out


def visemes_per_frame(
    timings: Iterable[TimingLike], n_frames: int, fps: float = VIDEO_FPS
) -> np.ndarray:
    """One viseme id (0..15, :data:`VISEME_NAMES`) per video frame.

    Frame ``i`` covers ``[i / fps, (i + 1) / fps)``; it gets the class that sounds
    longest inside that interval, where time that no phoneme covers counts as silence
    (silence wins only when it is strictly the longest). Phoneme timings are used when
    there are any; otherwise word timings are spread over a spelling-based guess.

    Args:
        timings: objects with ``symbol``, ``kind`` ("phoneme"/"word"), ``start``, ``end``
            in seconds from frame 0 (``voice.types.Timing`` fits).
        n_frames: how many frames to label.
        fps: the video frame rate.

    Returns:
        int64 ``[n_frames]``.

    Raises:
        AudioFeatureError: ``n_frames`` negative or ``fps`` not positive.
    """
    if n_frames < 0:
        raise AudioFeatureError(f"visemes_per_frame: n_frames={n_frames} must not be negative")
    if not fps > 0:
        raise AudioFeatureError(f"visemes_per_frame: fps={fps} must be positive")
    weight = np.zeros((n_frames, len(VISEME_NAMES)), np.float64)
    step = 1.0 / fps
    for start, end, vid in _sounds(timings):
        if end <= start:
            continue
        first = max(int(np.floor(start * fps)), 0)
        last = min(int(np.ceil(end * fps)), n_frames)
        for i in range(first, last):
            overlap = min(end, (i + 1) * step) - max(start, i * step)
            if overlap > 0:
                weight[i, vid] += overlap
    spoken = weight[:, 1:].sum(axis=1)
    weight[:, SILENCE] = np.maximum(step - spoken, 0.0)  # explicit pauses included
    weight[:, SILENCE] *= 1.0 - 1e-9  # a tie goes to the sound
    return np.argmax(weight, axis=1).astype(np.int64)
