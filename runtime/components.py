"""Build the voice, dialogue, safety and consent components from the one config.

This module and its avatar half, :mod:`runtime.avatar_components`, are the only
places that turn :class:`~runtime.config.Settings` into the components' own option
dataclasses, so each component stays free of the config.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.config import Settings
from runtime.dialogue.base import DialogueBackend, GenerationOptions
from runtime.dialogue.conversation import (
    Conversation,
    ConversationMemory,
    ConversationOptions,
    Persona,
)
from runtime.errors import DialogueError
from runtime.safety import (
    AlertSink,
    DistressDetector,
    DistressOptions,
    LogAlertSink,
    WebhookAlertSink,
)
from voice.asr import ASROptions, WhisperASR
from voice.tts.base import TTSBackend, VoiceCloneGate, deny_all_clones
from voice.turns import EagerTurns
from voice.vad import SileroVAD, TurnDetector, VADOptions

if TYPE_CHECKING:
    from consent.gate import ConsentGate
    from consent.store import Purger


def embedded_piper_path() -> Path | None:
    """The embedded Piper voice, or None when its package is missing."""
    from voice.errors import ModelNotFoundError
    from voice.tts.piper import default_model_path

    try:
        path = default_model_path()
    except ModelNotFoundError:
        return None
    return path if path.is_file() else None


def embedded_gguf_path() -> Path | None:
    """The embedded SmolLM2 GGUF, or None when its package is missing."""
    from runtime.dialogue.llamacpp import embedded_model_path

    try:
        path = embedded_model_path()
    except DialogueError:
        return None
    return path if path.is_file() else None


def vad_options(settings: Settings) -> VADOptions:
    v = settings.vad
    return VADOptions(
        threshold=v.threshold,
        min_silence_ms=v.min_silence_ms,
        min_speech_ms=v.min_speech_ms,
        speech_pad_ms=v.speech_pad_ms,
        max_turn_s=v.max_turn_s,
        progress_ms=settings.asr.partial_interval_ms if settings.asr.partials else 0,
        pause_ms=v.pause_ms if 0 < v.pause_ms < v.min_silence_ms else 0,
    )


def load_turn_detector(settings: Settings) -> TurnDetector:
    """A fresh end-of-turn detector (one per audio stream; blocking: loads Silero)."""
    return TurnDetector(SileroVAD.load(), vad_options(settings))


def turns(settings: Settings, asr: WhisperASR) -> TurnDetector | EagerTurns:
    """A live session's end-of-turn detector (blocking: loads Silero).

    With ``vad.pause_ms`` set (shorter than ``min_silence_ms``), a turn may end at a
    pause once ``asr`` heard its words form a finished sentence, transcript attached
    (:class:`voice.turns.EagerTurns`); otherwise the plain detector.
    """
    detector = load_turn_detector(settings)
    return EagerTurns(detector, asr.transcribe) if detector.options.pause_ms else detector


def load_asr(
    settings: Settings, model: str | None = None, language: str | None = None
) -> WhisperASR:
    """The recogniser (blocking load; call from a worker thread in async code)."""
    a = settings.asr
    return WhisperASR.load(
        ASROptions(
            model=a.model if model is None else model,
            device=a.device,
            compute_type=a.compute_type,
            language=a.language if language is None else language,
            beam_size=a.beam_size,
            cpu_threads=a.cpu_threads,
        )
    )


def tts_options(settings: Settings, backend: str) -> object:
    """The option dataclass of TTS ``backend`` built from ``settings.tts``."""
    t = settings.tts
    if backend == "piper":
        from voice.tts.piper import PiperOptions

        # Eldercare speaks slower unless a rate was configured explicitly.
        scale = t.length_scale
        if settings.persona.eldercare and "length_scale" not in t.model_fields_set:
            scale = 1.2
        return PiperOptions(
            model=Path(t.piper_model) if t.piper_model else None,
            length_scale=scale,
            memory_arena=t.piper_memory_arena,
        )
    if backend == "espeak":
        from voice.tts.espeak import EspeakOptions

        wpm = t.espeak_wpm if not settings.persona.eldercare else min(t.espeak_wpm, 135)
        return EspeakOptions(voice=t.espeak_voice, words_per_minute=wpm)
    if backend == "coqui":
        from voice.tts.coqui import CoquiOptions

        return CoquiOptions(
            model=t.coqui_model,
            reference=Path(t.coqui_reference) if t.coqui_reference else None,
            language=t.coqui_language,
        )
    return None


def clones_voice(settings: Settings) -> bool:
    """True when the configured TTS speaks in a cloned voice (coqui with a reference)."""
    return settings.tts.backend == "coqui" and bool(settings.tts.coqui_reference)


def clone_voice_id(settings: Settings) -> str | None:
    """Whose voice the cloned TTS speaks in, for the voice consent gate.

    It is the server's default face (``server.avatar``, a prepared photo's id): the
    reference recording must be of that person, and that avatar's grant must allow the
    voice. None for the synthetic face: no grant can cover that, so no clone is allowed.
    """
    from runtime.avatar_components import SYNTHETIC_REF

    avatar = settings.server.avatar
    return None if not avatar or avatar == SYNTHETIC_REF else avatar


def voice_clone_gate(settings: Settings, gate: ConsentGate | None) -> VoiceCloneGate:
    """The voice consent hook to hand to :func:`load_tts`.

    ``gate.voice_clone_gate`` for ``consent.deployment`` when the TTS clones a voice
    (see :func:`clones_voice`); otherwise :func:`voice.tts.base.deny_all_clones`.
    """
    if gate is None or not clones_voice(settings):
        return deny_all_clones
    return gate.voice_clone_gate(settings.consent.deployment)


async def load_tts(
    settings: Settings, backend: str | None = None, clone_gate: VoiceCloneGate = deny_all_clones
) -> TTSBackend:
    """Load the configured TTS backend in a worker thread.

    ``clone_gate`` is the voice-consent hook (build it with :func:`voice_clone_gate`):
    only a cloning backend (coqui) asks it, for the voice of :func:`clone_voice_id` and
    the purpose ``consent.purpose``, before loading and before every sentence.

    Raises:
        voice.errors.ConsentRequiredError: coqui, and the gate refused the voice.
    """
    from voice.tts.registry import load_tts as load

    name = backend or settings.tts.backend
    extra = {}
    if name == "coqui":
        extra = {
            "clone_gate": clone_gate,
            "voice_id": clone_voice_id(settings),
            "purpose": settings.consent.purpose,
        }
    return await asyncio.to_thread(load, name, tts_options(settings, name), **extra)


async def load_dialogue(settings: Settings) -> DialogueBackend:
    """Load the configured LLM backend; the caller must ``await backend.aclose()``."""
    from runtime.dialogue.registry import load_dialogue as load

    d = settings.dialogue
    if d.backend == "openai":
        from runtime.dialogue.openai import OpenAIOptions

        options: object = OpenAIOptions(
            model=d.model,
            base_url=d.base_url,
            api_key=d.api_key.get_secret_value() if d.api_key else None,
            first_token_timeout_s=d.first_token_timeout_s,
            overall_timeout_s=d.timeout_s,
        )
    else:
        from runtime.dialogue.llamacpp import LlamaCppOptions

        options = LlamaCppOptions(
            model_path=Path(d.model_path) if d.model_path else None,
            n_threads=d.n_threads or None,
        )
    return await load(d.backend, options)


# A reply's first sentence is spoken from its first comma after this many characters:
# the model writes ~50 tokens/s on one thread here, so a 15-word first sentence held
# the first audio back by ~0.3 s more than its first clause.
FIRST_CLAUSE_CHARS = 20


def persona(settings: Settings) -> Persona:
    """The companion's persona as the config sets it."""
    p = settings.persona
    return Persona(
        name=p.name,
        tone=p.tone,
        language=p.language,
        eldercare=p.eldercare,
        max_sentences=p.max_sentences,
    )


def memory_trim_to(history_turns: int) -> int:
    """How many messages a full history is trimmed down to: two thirds, kept even.

    A trim changes everything after the persona, so the LLM evaluates the whole
    history again (in the background, between turns): trimming in steps makes that
    rare (every third question at the default 12) while keeping most of the history.
    """
    return max(2, (2 * history_turns // 3) // 2 * 2)


def conversation(settings: Settings, backend: DialogueBackend) -> Conversation:
    """A conversation over ``backend`` with the persona and per-person memory of the config."""
    d = settings.dialogue
    return Conversation(
        backend,
        persona(settings),
        ConversationMemory(
            settings.memory_dir,
            max_turns=d.history_turns,
            trim_to=min(d.history_turns, memory_trim_to(d.history_turns)),
        ),
        ConversationOptions(
            generation=GenerationOptions(max_tokens=d.max_tokens, temperature=d.temperature),
            attempts=d.retries + 1,
            first_clause_chars=FIRST_CLAUSE_CHARS,
        ),
        detector=distress_detector(settings),  # the site's own phrases open a caring reply too
    )


def distress_detector(settings: Settings) -> DistressDetector | None:
    """The distress detector, or None when safety alerts are off."""
    s = settings.safety
    if not s.enabled:
        return None
    extra = {k: tuple(v) for k, v in s.extra_phrases.items()}
    if s.phrases is None:
        return DistressDetector(DistressOptions(extra_phrases=extra))
    phrases = {k: tuple(v) for k, v in s.phrases.items()}
    return DistressDetector(DistressOptions(phrases=phrases, extra_phrases=extra))


def alert_sinks(settings: Settings) -> list[AlertSink]:
    """Where alerts go: always the alert log; also the webhook when one is set."""
    s = settings.safety
    sinks: list[AlertSink] = [LogAlertSink(settings.alerts_path)]
    if s.webhook_url:
        token = s.webhook_token.get_secret_value() if s.webhook_token else None
        sinks.append(WebhookAlertSink(s.webhook_url, timeout_s=s.webhook_timeout_s, token=token))
    return sinks


def prepared_avatar_purger(settings: Settings) -> Purger:
    """A store purger that deletes the prepared avatars (``<data dir>/avatars/<id>``) of
    purged subjects and of photos that lost their grant."""
    from avatar.errors import ImageInputError
    from avatar.store import AvatarStore

    avatars = AvatarStore(settings.avatars_dir)

    def purge(subject_id: str, avatar_ids: tuple[str, ...]) -> None:
        for avatar_id in avatar_ids:
            with contextlib.suppress(ImageInputError):  # not an avatar id: nothing stored
                avatars.delete(avatar_id)

    return purge


def consent_gate(settings: Settings, purgers: Sequence[Purger] = ()) -> ConsentGate:
    """The consent gate over the configured store (migrated) and the signing keys.

    The store deletes the prepared avatars of whatever it purges
    (:func:`prepared_avatar_purger`), then runs ``purgers`` (e.g. the server's cache).
    Blocking (opens the database, may create keys): call from a worker thread.
    """
    from consent.gate import ConsentGate
    from consent.keys import SigningKeys
    from consent.store import ConsentStore

    url = settings.consent.database_url.get_secret_value() or None
    store = ConsentStore.open(
        settings.data_dir, url=url, purgers=(prepared_avatar_purger(settings), *purgers)
    )
    return ConsentGate(store, SigningKeys.load(settings.data_dir / "consent" / "signing"))
