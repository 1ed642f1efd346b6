"""Reading, writing and resampling audio. Everything inside is mono float32.

Any rate and channel count read from a file is converted to what the caller
asks for; a corrupt or empty file raises :class:`~voice.errors.AudioInputError`
that names the file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from voice.errors import AudioInputError
from voice.types import AudioChunk

ASR_RATE = 16_000


def to_mono_float(pcm: np.ndarray) -> np.ndarray:
    """Any int/float array of shape (n,) or (n, channels) → float32 mono in [-1, 1]."""
    data = np.asarray(pcm)
    if data.dtype.kind == "i":
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    elif data.dtype.kind == "u":
        info = np.iinfo(data.dtype)
        data = (data.astype(np.float32) - (info.max + 1) / 2) / ((info.max + 1) / 2)
    data = data.astype(np.float32, copy=False)
    if data.ndim == 2:
        data = data.mean(axis=1)
    elif data.ndim != 1:
        raise AudioInputError(f"audio must be 1-D or (samples, channels), got shape {data.shape}")
    return np.clip(data, -1.0, 1.0)


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample mono float32 audio (soxr, high quality). A no-op when the rates match."""
    if from_rate <= 0 or to_rate <= 0:
        raise AudioInputError(f"sample rates must be positive, got {from_rate} → {to_rate}")
    if from_rate == to_rate or len(pcm) == 0:
        return pcm.astype(np.float32, copy=False)
    return soxr.resample(pcm, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def read_audio(path: str | Path, sample_rate: int | None = ASR_RATE) -> AudioChunk:
    """Read an audio file as mono float32, resampled to ``sample_rate`` (None keeps it).

    Raises:
        AudioInputError: missing, unreadable, corrupt or empty file (the message names it).
    """
    file = Path(path)
    if not file.is_file():
        raise AudioInputError(f"{file}: no such audio file")
    try:
        data, rate = sf.read(str(file), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioInputError(f"{file}: corrupt or unsupported audio file ({err})") from None
    pcm = to_mono_float(data)
    if len(pcm) == 0:
        raise AudioInputError(f"{file}: the audio file is empty")
    if sample_rate is not None and rate != sample_rate:
        pcm = resample(pcm, rate, sample_rate)
        rate = sample_rate
    return AudioChunk(pcm=pcm, sample_rate=int(rate))


def to_int16(pcm: np.ndarray) -> np.ndarray:
    """float32 [-1, 1] → int16 PCM."""
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)


def write_wav(path: str | Path, pcm: np.ndarray, sample_rate: int) -> Path:
    """Write mono 16-bit WAV atomically (temp file + rename: a crash leaves no half file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".wav", dir=target.parent)
    os.close(fd)
    try:
        sf.write(tmp, to_int16(pcm), sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
