"""A real, tiny turn through every stage before the server says it is ready.

The first turn of a fresh server used to pay every stage's cold start: Whisper's
first decode, llama.cpp's first evaluation (and the persona prompt, evaluated from
scratch), Piper's first synthesis, Silero's import, the face generator's first
chunk. :func:`warm_up` runs each once on real data (a sentence spoken by the TTS),
so ``/health`` turns ready only when the first person would be answered as fast as
the tenth, and evaluates each persona's system prompt into the dialogue backend's
shared states (:meth:`~runtime.dialogue.llamacpp.LlamaCppChat.warm`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from runtime.dialogue.base import Message, PromptWarming
from runtime.dialogue.conversation import Persona, system_prompt
from voice.audio import resample
from voice.types import AudioChunk

if TYPE_CHECKING:
    from avatar.base import AvatarGenerator
    from runtime.dialogue.base import DialogueBackend
    from voice.asr import WhisperASR
    from voice.tts.base import TTSBackend
    from voice.vad import TurnDetector

log = logging.getLogger(__name__)
PHRASE = "Hello, how are you today?"
GENERATOR_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class WarmUpReport:
    """What the warm-up did, for the start-up log.

    Attributes:
        seconds: wall time of each stage, by name.
        heard: what Whisper made of the spoken phrase (a broken ASR shows here).
    """

    seconds: dict[str, float] = field(default_factory=dict)
    heard: str = ""


async def _timed(seconds: dict[str, float], name: str, step: Awaitable[object]) -> object:
    start = time.monotonic()
    result = await step
    seconds[name] = round(time.monotonic() - start, 3)
    return result


async def _speak(tts: TTSBackend, text: str) -> AudioChunk:
    parts = [chunk async for chunk in tts.synthesize(text)]
    pcm = np.concatenate([p.pcm for p in parts]).astype(np.float32)
    return AudioChunk(pcm=pcm, sample_rate=parts[0].sample_rate, pts=0.0)


def _detect(make_detector: Callable[[], TurnDetector], speech: AudioChunk) -> None:
    detector = make_detector()
    pcm = resample(speech.pcm, speech.sample_rate, 16_000)
    detector.push(np.concatenate([pcm, np.zeros(16_000, np.float32)]))


async def _animate(generator: AvatarGenerator, speech: AudioChunk) -> None:
    """Push the speech and wait for its first speaking frame (a slow generator only
    costs a warning: sessions then start on a cold one)."""
    try:
        await generator.push_audio(speech.pcm, speech.sample_rate)
        await generator.flush()
        async with asyncio.timeout(GENERATOR_TIMEOUT_S):
            async for item in generator:
                if getattr(item, "speaking", False):
                    return
    except TimeoutError:
        log.warning("warm-up: no speaking frame within %.0f s", GENERATOR_TIMEOUT_S)
    finally:
        await generator.aclose()


async def warm_up(
    *,
    asr: WhisperASR,
    voices: Sequence[TTSBackend],
    dialogue: DialogueBackend,
    personas: Iterable[Persona],
    make_detector: Callable[[], TurnDetector] | None = None,
    make_generator: Callable[[], AvatarGenerator] | None = None,
) -> WarmUpReport:
    """Run each stage once on a spoken phrase; evaluate every persona's system prompt.

    Args:
        asr: the shared recogniser.
        voices: every TTS voice sessions may speak in (the first one speaks the phrase).
        dialogue: the shared LLM backend (warmed when it is a ``PromptWarming``).
        personas: the personas sessions may use (default and kiosk profiles).
        make_detector: builds an end-of-turn detector (loads Silero; blocking).
        make_generator: builds a face generator (blocking); closed afterwards.

    Raises:
        Whatever a stage raises: a model that fails here would fail the first turn.
    """
    seconds: dict[str, float] = {}
    speech = None
    for number, voice in enumerate(voices):
        said = await _timed(seconds, f"tts_{number}", _speak(voice, PHRASE))
        speech = speech or said
    assert isinstance(speech, AudioChunk), "warm_up needs at least one voice"
    if make_detector is not None:
        await _timed(seconds, "vad", asyncio.to_thread(_detect, make_detector, speech))
    heard = await _timed(
        seconds,
        "asr",
        asr.transcribe(
            AudioChunk(pcm=resample(speech.pcm, speech.sample_rate, 16_000), sample_rate=16_000)
        ),
    )
    if isinstance(dialogue, PromptWarming):
        prompts = {system_prompt(p) for p in personas}
        for number, prompt in enumerate(sorted(prompts)):
            await _timed(
                seconds, f"llm_persona_{number}", dialogue.warm([Message("system", prompt)], None)
            )
    if make_generator is not None:
        generator = await asyncio.to_thread(make_generator)
        await _timed(seconds, "face", _animate(generator, speech))
    return WarmUpReport(seconds=seconds, heard=getattr(heard, "text", ""))
