"""speak_reply, frames in and frames out: a scripted LLM and a TTS that records its calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from runtime.dialogue.speak import speak_reply
from runtime.errors import DialogueError
from voice.types import SpeechChunk


class ScriptedConversation:
    """Yields the given sentences; raises ``error`` after them; records how it ended."""

    def __init__(self, sentences: list[str], error: Exception | None = None) -> None:
        self.sentences, self.error = sentences, error
        self.written: list[str] = []
        self.cancelled = False

    async def reply(self, person: str, user_text: str) -> AsyncIterator[str]:
        try:
            for sentence in self.sentences:
                await asyncio.sleep(0)
                self.written.append(sentence)
                yield sentence
            if self.error is not None:
                raise self.error
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class SlowTTS:
    """Two chunks per sentence, 10 ms apart; records how much the LLM had written."""

    sample_rate = 16_000

    def __init__(self, conversation: ScriptedConversation) -> None:
        self.conversation = conversation
        self.spoken: list[str] = []
        self.written_when_speaking: list[int] = []

    async def synthesize(self, text: str) -> AsyncIterator[SpeechChunk]:
        self.spoken.append(text)
        for i in range(2):
            await asyncio.sleep(0.01)
            self.written_when_speaking.append(len(self.conversation.written))
            yield SpeechChunk(np.zeros(160, np.float32), self.sample_rate, text, is_last=i == 1)


async def test_sentences_are_spoken_in_order_while_the_llm_writes_ahead():
    conversation = ScriptedConversation(["One.", "Two.", "Three."])
    tts = SlowTTS(conversation)
    heard: list[str] = []
    got = [
        (number, sentence, chunk.is_last)
        async for number, sentence, chunk in speak_reply(
            conversation, tts, "p", "hi", on_sentence=heard.append
        )
    ]
    assert got == [
        (0, "One.", False),
        (0, "One.", True),
        (1, "Two.", False),
        (1, "Two.", True),
        (2, "Three.", False),
        (2, "Three.", True),
    ]
    assert heard == ["One.", "Two.", "Three."]
    assert tts.spoken == ["One.", "Two.", "Three."]
    # the LLM had written every sentence before the first one finished speaking
    assert tts.written_when_speaking[0] == 3


async def test_an_llm_error_surfaces_after_what_was_already_written_is_spoken():
    conversation = ScriptedConversation(["One."], error=DialogueError("backend gone"))
    tts = SlowTTS(conversation)
    got: list[str] = []
    with pytest.raises(DialogueError, match="backend gone"):
        async for _number, sentence, _chunk in speak_reply(conversation, tts, "p", "hi"):
            got.append(sentence)
    assert got == ["One.", "One."]


async def test_closing_the_stream_cancels_the_llm():
    class Endless(ScriptedConversation):
        async def reply(self, person: str, user_text: str) -> AsyncIterator[str]:
            async for sentence in super().reply(person, user_text):
                yield sentence
            try:
                await asyncio.Event().wait()  # an LLM that never finishes
            except asyncio.CancelledError:
                self.cancelled = True
                raise

    conversation = Endless(["One.", "Two."])
    stream = speak_reply(conversation, SlowTTS(conversation), "p", "hi")
    number, sentence, _chunk = await anext(stream)
    assert (number, sentence) == (0, "One.")
    await stream.aclose()  # barge-in
    assert conversation.cancelled
