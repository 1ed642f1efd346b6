"""The contract every TTS backend implements.

A backend is built cheaply, then ``load()`` does the I/O (model files, engine
start-up). ``synthesize`` streams one :class:`~voice.types.SpeechChunk` per
sentence (or finer), so the first audio is ready before the whole text is.
Blocking engine calls run in a worker thread: never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from voice.sentences import split_sentences
from voice.types import SpeechChunk


@runtime_checkable
class TTSBackend(Protocol):
    """Streaming speech synthesis.

    Attributes:
        name: registry name ("piper", "espeak", "coqui").
        sample_rate: rate of every chunk this backend yields.
        reports_timings: True when chunks carry phoneme or word timings.
    """

    name: str
    sample_rate: int
    reports_timings: bool

    def synthesize(self, text: str) -> AsyncIterator[SpeechChunk]:
        """Speak ``text``; yields chunks in order, the last one with ``is_last=True``.

        Raises:
            voice.errors.BackendError: the engine failed (see ``retryable``).
        """
        ...


@dataclass(frozen=True, slots=True)
class VoiceCloneRequest:
    """What a cloning backend asks the consent hook before it speaks in someone's voice.

    Attributes:
        reference: path of the reference recording of the voice to clone.
        voice_id: the avatar or subject id that recording belongs to, if known.
        purpose: why the voice is used (deployment or purpose scope).
    """

    reference: Path
    voice_id: str | None
    purpose: str


# The one hook for voice consent: returns True only where a valid voice grant exists.
# ``consent`` provides the real gate; the default refuses every clone.
VoiceCloneGate = Callable[[VoiceCloneRequest], bool]


def deny_all_clones(request: VoiceCloneRequest) -> bool:
    """Default gate: no voice is cloned until a consent gate is wired in."""
    return False


def speakable_sentences(text: str) -> list[str]:
    """The sentences of ``text`` that have something to pronounce (a letter or a digit)."""
    return [s for s in split_sentences(text) if any(ch.isalnum() for ch in s)]


async def stream_by_sentence(
    text: str,
    render: Callable[[str, bool], SpeechChunk],
    before_each: Callable[[], None] | None = None,
) -> AsyncIterator[SpeechChunk]:
    """The streaming loop every backend shares: one chunk per speakable sentence.

    Args:
        text: what to say; text with nothing to pronounce yields no chunk.
        render: blocking ``(sentence, is_last) -> SpeechChunk``; runs in a worker
            thread, one sentence at a time, only when the next chunk is asked for.
        before_each: called before each sentence (e.g. a consent re-check that raises).
    """
    sentences = speakable_sentences(text)
    for index, sentence in enumerate(sentences):
        if before_each is not None:
            before_each()
        is_last = index == len(sentences) - 1
        chunk = await asyncio.to_thread(render, sentence, is_last)
        if len(chunk.pcm) or is_last:
            yield chunk
