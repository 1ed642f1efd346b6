"""Shared fixtures: an isolated data dir per test, real speech made at test time."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from voice.audio import read_audio, resample
from voice.types import AudioChunk

# One set of numeric kernels on every x86-64 machine with AVX2, whatever else its CPU
# has: PyTorch's vectorised loops, MKL's GEMMs (conditional numerical reproducibility)
# and oneDNN's JIT all stop at AVX2, so the training tests see the same arithmetic on
# the project's machines, on CI and on a new user's. This is the first conftest pytest
# loads, so this runs before any conftest or test module imports torch (a
# pytest_configure hook would run too late: the conftests beside the tests load first).
CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _pin_cpu_kernels() -> None:
    """Set :data:`CPU_KERNELS` (a variable the user set is kept; other CPUs are left alone)."""
    import os

    cpuinfo = Path("/proc/cpuinfo")
    if " avx2" not in (cpuinfo.read_text() if cpuinfo.is_file() else ""):
        return
    if "torch" in sys.modules:
        # A spawned worker inherits the pins from its parent's environment: nothing to say.
        if any(os.environ.get(name) != value for name, value in CPU_KERNELS.items()):
            message = "torch imported before tests/conftest.py: kernels not pinned"
            warnings.warn(message, stacklevel=1)
        return
    for name, value in CPU_KERNELS.items():
        os.environ.setdefault(name, value)
    # Inductor's cache does not tell kernels built for AVX-512 from AVX2 ones: one built
    # by an unpinned run and loaded here fails ("tuple args required"). Its own folder.
    import tempfile

    own = Path(tempfile.gettempdir()) / f"torchinductor_likeness_tests_{os.getuid()}_avx2"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(own))


_pin_cpu_kernels()


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> Iterator[Path]:
    """Every test gets its own LIKENESS_DATA_DIR and no stray LIKENESS_* variables."""
    import os

    for name in list(os.environ):
        if name.startswith("LIKENESS_"):
            monkeypatch.delenv(name)
    data = tmp_path_factory.mktemp("data")
    monkeypatch.setenv("LIKENESS_DATA_DIR", str(data))
    yield data


def espeak_wav(text: str, path: Path, speed: int = 150, voice: str = "en-us") -> Path:
    """Speak ``text`` with Debian's espeak-ng into a 22.05 kHz WAV."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: run `make setup` (apt-get install espeak-ng)")
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture(scope="session")
def piper_tts():
    """The embedded Piper voice, loaded once."""
    from voice.tts.piper import PiperOptions, PiperTTS

    return PiperTTS.load(PiperOptions(noise_scale=0.0, noise_w=0.0))


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate, case and punctuation aside."""
    import jiwer

    norm = jiwer.Compose(
        [
            jiwer.ToLowerCase(),
            jiwer.RemovePunctuation(),
            jiwer.RemoveMultipleSpaces(),
            jiwer.Strip(),
            jiwer.ReduceToListOfListOfWords(),
        ]
    )
    return jiwer.wer(reference, hypothesis, reference_transform=norm, hypothesis_transform=norm)


def piper_speech(tts, text: str) -> AudioChunk:
    """Speak ``text`` with Piper; returns 16 kHz audio."""

    async def run() -> np.ndarray:
        return np.concatenate([c.pcm async for c in tts.synthesize(text)])

    # A thread of its own, so async tests (with a running loop) can call it too.
    with ThreadPoolExecutor(1) as pool:
        pcm = pool.submit(asyncio.run, run()).result()
    return AudioChunk(pcm=resample(pcm, tts.sample_rate, 16_000), sample_rate=16_000)


def speech_bounds(chunk: AudioChunk, offset_s: float, level: float = 0.01) -> tuple[float, float]:
    """First and last sample above ``level``, in seconds, shifted by ``offset_s``."""
    loud = np.nonzero(np.abs(chunk.pcm) > level)[0]
    return offset_s + loud[0] / chunk.sample_rate, offset_s + loud[-1] / chunk.sample_rate


@pytest.fixture(scope="session")
def whisper():
    """The embedded tiny.en, loaded once."""
    from voice.asr import WhisperASR

    return WhisperASR.load()


@pytest.fixture(scope="session")
def espeak_clip(tmp_path_factory) -> AudioChunk:
    """A short espeak-ng sentence at 16 kHz."""
    path = espeak_wav(
        "I would like to hear a story about the sea.", tmp_path_factory.mktemp("s") / "s.wav"
    )
    return read_audio(path)
