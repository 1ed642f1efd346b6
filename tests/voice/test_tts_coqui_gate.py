"""The cloned voice stays behind the voice consent gate, with or without coqui-tts.

The gates here are real gate callables (a grant that can be revoked), not doubles of
the engine: the gate must be asked before any model is touched, so these run where
coqui-tts is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voice.errors import (
    AudioInputError,
    BackendError,
    BackendUnavailableError,
    ConsentRequiredError,
)
from voice.tts.base import VoiceCloneRequest
from voice.tts.coqui import CoquiOptions, CoquiTTS
from voice.tts.espeak import EspeakTTS
from voice.tts.registry import load_tts

COQUI_INSTALLED = importlib.util.find_spec("TTS") is not None


class Grant:
    """A voice grant for one recording that its owner can revoke; it logs every question."""

    def __init__(self, reference: Path) -> None:
        self.reference = reference
        self.revoked = False
        self.asked: list[VoiceCloneRequest] = []

    def __call__(self, request: VoiceCloneRequest) -> bool:
        self.asked.append(request)
        return not self.revoked and request.reference == self.reference


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    """A short speech recording to stand for the person's voice."""

    async def speak() -> np.ndarray:
        chunks = [c async for c in EspeakTTS.load().synthesize("This is my voice, recorded.")]
        return np.concatenate([c.pcm for c in chunks])

    path = tmp_path / "voice.wav"
    sf.write(path, asyncio.run(speak()), 22050)
    return path


def test_default_gate_refuses_every_clone(reference: Path) -> None:
    with pytest.raises(ConsentRequiredError, match="voice grant"):
        CoquiTTS.load(CoquiOptions(reference=reference))
    with pytest.raises(ConsentRequiredError):
        load_tts("coqui", CoquiOptions(reference=reference))


def test_gate_is_asked_first_with_the_request(reference: Path) -> None:
    grant = Grant(reference)
    grant.revoked = True
    # coqui-tts is not installed here: a refusal (not BackendUnavailableError) shows the
    # gate was asked before anything was imported or loaded.
    with pytest.raises(ConsentRequiredError):
        CoquiTTS.load(CoquiOptions(reference=reference), grant, voice_id="ada", purpose="kiosk")
    assert grant.asked == [VoiceCloneRequest(reference=reference, voice_id="ada", purpose="kiosk")]


def test_a_grant_for_another_recording_does_not_count(reference: Path, tmp_path: Path) -> None:
    grant = Grant(tmp_path / "someone-else.wav")
    with pytest.raises(ConsentRequiredError):
        CoquiTTS.load(CoquiOptions(reference=reference), grant)


def test_a_clone_needs_a_reference_recording(tmp_path: Path) -> None:
    with pytest.raises(AudioInputError, match="reference"):
        CoquiTTS(CoquiOptions())
    missing = tmp_path / "missing.wav"
    grant = Grant(missing)
    with pytest.raises(AudioInputError, match="not found"):
        CoquiTTS.load(CoquiOptions(reference=missing), grant)
    assert grant.asked == []


@pytest.mark.skipif(COQUI_INSTALLED, reason="coqui-tts is installed: nothing to report missing")
def test_with_consent_but_without_coqui_says_how_to_install(reference: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"pip install 'likeness\[coqui\]'"):
        CoquiTTS.load(CoquiOptions(reference=reference), Grant(reference))


async def test_synthesize_asks_the_gate_on_every_call(reference: Path) -> None:
    grant = Grant(reference)
    backend = CoquiTTS(CoquiOptions(reference=reference), clone_gate=grant)
    grant.revoked = True
    with pytest.raises(ConsentRequiredError):
        await anext(backend.synthesize("Hello there."))
    assert len(grant.asked) == 1
    # Restored: the gate lets it through, and only then the engine is needed.
    grant.revoked = False
    with pytest.raises(BackendError, match="CoquiTTS.load"):
        await anext(backend.synthesize("Hello there."))
    assert len(grant.asked) == 2
