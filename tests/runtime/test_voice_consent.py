"""The server's cloned voice speaks only under a live voice grant for its deployment.

coqui-tts is not installed here, so the chain is followed up to the engine: settings →
``components.voice_clone_gate`` (what ``Companion.load`` hands to ``load_tts``) → the
coqui backend's own check → ``ConsentGate`` → the real store with real signed grants.
A refusal raises ``ConsentRequiredError``; a permission gets as far as the missing
engine (``BackendUnavailableError`` / "not loaded").
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from datetime import timedelta

import pytest

from consent.gate import watch_grant
from consent.keys import SigningKeys
from consent.store import utcnow
from runtime import components
from runtime.config import load_config
from runtime.server import Companion
from tests.conftest import espeak_wav
from tests.consent.conftest import World
from voice.errors import BackendError, BackendUnavailableError, ConsentRequiredError
from voice.tts.base import deny_all_clones
from voice.tts.coqui import CoquiTTS

COQUI_INSTALLED = importlib.util.find_spec("TTS") is not None
DEPLOYMENT, PURPOSE = "kiosk", "eldercare"  # what World.grant() grants by default


@pytest.fixture
def voice(tmp_path):
    """A data dir whose consent store knows Vera, and settings that clone her voice."""
    gate = components.consent_gate(load_config(data_dir=tmp_path))
    world = World(gate.store, SigningKeys.load(tmp_path / "consent" / "signing"), "Vera")
    reference = espeak_wav("This is my voice, recorded for the companion.", tmp_path / "v.wav")
    settings = load_config(
        data_dir=tmp_path,
        tts={"backend": "coqui", "coqui_reference": str(reference)},
        server={"avatar": world.avatar},
        consent={"deployment": DEPLOYMENT, "purpose": PURPOSE},
    )
    yield settings, gate, world
    gate.store.close()


async def load(settings, clone_gate) -> None:
    await components.load_tts(settings, clone_gate=clone_gate)


@pytest.mark.skipif(COQUI_INSTALLED, reason="would download XTTS-v2 once the gate allows it")
async def test_the_voice_loads_only_with_a_live_voice_grant_for_the_deployment(voice):
    settings, gate, world = voice
    clone = components.voice_clone_gate(settings, gate)
    assert clone is not deny_all_clones
    with pytest.raises(ConsentRequiredError, match="voice grant"):
        await load(settings, clone)  # no grant at all
    world.grant(allow_voice=False)
    world.grant(deployments=["browser-chat"])
    with pytest.raises(ConsentRequiredError):
        await load(settings, clone)  # the face only; the voice elsewhere
    grant = world.grant()
    with pytest.raises(BackendUnavailableError):
        await load(settings, clone)  # allowed: only the engine is missing
    gate.store.revoke(grant.id, by="subject", reason="not my voice any more")
    with pytest.raises(ConsentRequiredError):
        await load(settings, clone)
    entries, _seq, _head = gate.store.audit_log()
    asked = [e.data() for e in entries if e.action == "check" and e.actor == "tts"]
    assert [a["allowed"] for a in asked] == [False, False, True, False]
    assert all(
        a["avatar_id"] == world.avatar and a["deployment"] == DEPLOYMENT and a["want_voice"]
        for a in asked
    )


async def test_coqui_asks_the_gate_before_every_sentence(voice):
    settings, gate, world = voice
    backend = CoquiTTS(
        components.tts_options(settings, "coqui"),
        clone_gate=components.voice_clone_gate(settings, gate),
        voice_id=components.clone_voice_id(settings),
        purpose=settings.consent.purpose,
    )
    grant = world.grant()
    world.grant(allow_voice=False)  # the face stays allowed: the subject is not purged
    with pytest.raises(BackendError, match="CoquiTTS.load"):
        await anext(backend.synthesize("Good morning, Vera."))  # the gate let it through
    gate.store.revoke(grant.id, by="subject", reason="voice only")
    with pytest.raises(ConsentRequiredError):
        await anext(backend.synthesize("Good morning, Vera."))


def test_no_clone_without_coqui_or_for_the_synthetic_face(voice):
    settings, gate, world = voice
    world.grant()
    tts = settings.tts.model_copy(update={"backend": "piper"})
    piper = settings.model_copy(update={"tts": tts})
    assert components.voice_clone_gate(piper, gate) is deny_all_clones
    synthetic = settings.model_copy(
        update={"server": settings.server.model_copy(update={"avatar": "synthetic"})}
    )
    assert components.clone_voice_id(synthetic) is None
    with pytest.raises(ConsentRequiredError):  # nobody's grant covers the drawn face
        asyncio.run(load(synthetic, components.voice_clone_gate(synthetic, gate)))


async def test_a_voice_revoke_is_seen_within_the_recheck_and_so_is_an_expiry(voice):
    settings, gate, world = voice
    grant = world.grant()
    world.grant(allow_voice=False)
    watch = asyncio.create_task(
        watch_grant(
            gate,
            avatar_id=world.avatar,
            deployment=DEPLOYMENT,
            purpose=PURPOSE,
            want_voice=True,
            every_s=0.05,
        )
    )
    await asyncio.sleep(0.3)
    assert not watch.done()
    started = time.monotonic()
    await asyncio.to_thread(gate.store.revoke, grant.id, by="subject", reason="stop")
    refusal = await asyncio.wait_for(watch, 2)
    seen_ms = 1000 * (time.monotonic() - started)
    assert not refusal.allowed and refusal.grant_id is not None
    print(f"voice revoke seen in {seen_ms:.0f} ms")
    # A grant that simply runs out moves no epoch; the watch still notices.
    world.grant(expires_at=utcnow() + timedelta(seconds=1))
    refusal = await asyncio.wait_for(
        watch_grant(
            gate,
            avatar_id=world.avatar,
            deployment=DEPLOYMENT,
            purpose=PURPOSE,
            want_voice=True,
            every_s=0.05,
        ),
        5,
    )
    assert not refusal.allowed


async def test_the_server_falls_back_to_the_stock_voice_after_a_voice_revoke(voice):
    settings, gate, world = voice
    grant = world.grant()
    world.grant(allow_voice=False)
    companion = Companion(settings)
    companion.gate = gate
    watch = asyncio.create_task(companion._watch_voice())
    await asyncio.sleep(0.5)
    assert not watch.done()
    await asyncio.to_thread(gate.store.revoke, grant.id, by="subject", reason="stop")
    await asyncio.wait_for(watch, 30)
    assert {v.name for v in companion._voices.values()} == {"piper"}
