"""A reply spoken while it is written: the LLM's sentences go to TTS as each completes.

:func:`speak_reply` is the streaming core of a turn, used by live sessions
(``runtime.session``) and the command line (``runtime.voiceloop``): the LLM keeps
writing in its own task while TTS speaks the sentences already written, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.dialogue.conversation import Conversation
    from voice.tts.base import TTSBackend
    from voice.types import SpeechChunk


async def speak_reply(
    conversation: Conversation,
    tts: TTSBackend,
    person: str,
    user_text: str,
    on_sentence: Callable[[str], None] | None = None,
) -> AsyncIterator[tuple[int, str, SpeechChunk]]:
    """Stream a reply: yields (sentence number, sentence, speech chunk) as soon as each exists.

    The LLM runs in its own task and queues sentences; TTS speaks them in order.
    ``on_sentence`` is called as soon as the LLM completes each sentence (before it
    is spoken). Closing this generator (barge-in) cancels both.
    """
    sentences: asyncio.Queue[str | None] = asyncio.Queue()

    async def write() -> None:
        try:
            async for sentence in conversation.reply(person, user_text):
                if on_sentence is not None:
                    on_sentence(sentence)
                await sentences.put(sentence)
        finally:
            await sentences.put(None)

    writer = asyncio.create_task(write())
    try:
        number = 0
        while (sentence := await sentences.get()) is not None:
            async for chunk in tts.synthesize(sentence):
                yield number, sentence, chunk
            number += 1
        await writer  # surfaces the LLM's error, if any
    finally:
        if not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
