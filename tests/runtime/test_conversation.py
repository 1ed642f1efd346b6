"""Conversation: sentence streaming, the single retry point, memory and barge-in truncation.

Replies come from the openai backend talking to a real local HTTP server
(``openai_server.ChatServer``), and once from the embedded SmolLM2 model.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runtime.dialogue.base import GenerationOptions, Message
from runtime.dialogue.conversation import (
    Conversation,
    ConversationMemory,
    ConversationOptions,
    Persona,
    system_prompt,
)
from runtime.dialogue.llamacpp import LlamaCppChat, LlamaCppOptions
from runtime.dialogue.openai import OpenAIChat, OpenAIOptions
from runtime.errors import ConfigError, DialogueError
from tests.runtime.openai_server import Behaviour, ChatServer

FIRST, SECOND, THIRD = (
    "Hello there.",
    "I am glad you came today.",
    "The garden looks lovely in the sun.",
)
FAST_RETRY = ConversationOptions(retry_delay_s=0.01)
UNLIMITED = Persona(max_sentences=None)


@pytest.fixture(scope="module")
def server() -> Iterator[ChatServer]:
    with ChatServer() as chat_server:
        yield chat_server


@pytest.fixture
async def chat(server: ChatServer) -> AsyncIterator[OpenAIChat]:
    server.reset()
    backend = await OpenAIChat.load(OpenAIOptions(model="stub", base_url=server.base_url))
    yield backend
    await backend.aclose()


@pytest.fixture
def memory(tmp_path: Path) -> ConversationMemory:
    return ConversationMemory(tmp_path / "memory", max_turns=6)


def talk(
    chat: OpenAIChat,
    memory: ConversationMemory,
    persona: Persona = UNLIMITED,
    options: ConversationOptions = FAST_RETRY,
) -> Conversation:
    return Conversation(chat, persona, memory, options)


async def test_first_sentence_arrives_while_the_server_is_still_streaming(
    server: ChatServer, chat: OpenAIChat, memory: ConversationMemory
) -> None:
    server.reset(Behaviour(token_delay=0.15))  # 16 words: about 2.3 s in all
    started = time.monotonic()
    arrivals: list[tuple[str, float, int]] = []
    async for sentence in talk(chat, memory).reply("ann", "Hi Robin!"):
        arrivals.append((sentence, time.monotonic() - started, server.seen.completed))
    total = time.monotonic() - started
    assert [a[0] for a in arrivals] == [FIRST, SECOND, THIRD]
    first_sentence, first_at, completed_then = arrivals[0]
    assert completed_then == 0, "the first sentence waited for the whole reply"
    assert first_at < total / 2
    assert memory.history("ann") == [
        Message("user", "Hi Robin!"),
        Message("assistant", f"{FIRST} {SECOND} {THIRD}"),
    ]


async def test_retries_once_on_a_server_error_then_succeeds(
    server: ChatServer, chat: OpenAIChat, memory: ConversationMemory
) -> None:
    server.reset(Behaviour(status=500, fail_times=1))
    sentences = [s async for s in talk(chat, memory).reply("ann", "Hi")]
    assert sentences == [FIRST, SECOND, THIRD]
    assert len(server.seen.requests) == 2


async def test_gives_up_after_the_configured_attempts(
    server: ChatServer, chat: OpenAIChat, memory: ConversationMemory
) -> None:
    server.reset(Behaviour(status=503))
    options = ConversationOptions(attempts=3, retry_delay_s=0.01)
    with pytest.raises(DialogueError) as caught:
        _ = [s async for s in talk(chat, memory, options=options).reply("ann", "Hi")]
    assert caught.value.retryable and len(server.seen.requests) == 3
    # The person did speak: the question is kept, with no reply.
    assert memory.history("ann") == [Message("user", "Hi")]


async def test_no_retry_on_a_final_error(
    server: ChatServer, chat: OpenAIChat, memory: ConversationMemory
) -> None:
    server.reset(Behaviour(status=401, error_message="bad key"))
    with pytest.raises(DialogueError, match="bad key"):
        _ = [s async for s in talk(chat, memory).reply("ann", "Hi")]
    assert len(server.seen.requests) == 1


async def test_no_retry_after_partial_output(
    server: ChatServer, chat: OpenAIChat, memory: ConversationMemory
) -> None:
    server.reset(Behaviour(drop_after=5))  # "Hello there. I am glad" then the cut
    heard: list[str] = []
    with pytest.raises(DialogueError) as caught:
        async for sentence in talk(chat, memory).reply("ann", "Hi"):
            heard.append(sentence)
    assert caught.value.retryable
    assert heard == [FIRST]
    assert len(server.seen.requests) == 1
    assert memory.history("ann") == [Message("user", "Hi"), Message("assistant", FIRST)]


async def test_closing_mid_reply_stops_the_backend_and_keeps_what_was_yielded(
    server: ChatServer, chat: OpenAIChat, memory: ConversationMemory
) -> None:
    server.reset(Behaviour(reply=f"{FIRST} Then " + "more and " * 200, token_delay=0.02))
    reply = talk(chat, memory).reply("ann", "Tell me everything")
    assert await anext(reply) == FIRST
    await reply.aclose()
    assert server.wait_for(lambda seen: seen.disconnects == 1)
    assert memory.history("ann") == [
        Message("user", "Tell me everything"),
        Message("assistant", FIRST),
    ]


async def test_cancelling_the_task_mid_reply_keeps_what_was_yielded(
    server: ChatServer, chat: OpenAIChat, memory: ConversationMemory
) -> None:
    server.reset(Behaviour(reply=f"{FIRST} {SECOND} And " + "more and " * 200, token_delay=0.02))
    got_two = asyncio.Event()
    heard: list[str] = []

    async def speak() -> None:
        async for sentence in talk(chat, memory).reply("ann", "Go on"):
            heard.append(sentence)
            if len(heard) == 2:
                got_two.set()

    task = asyncio.create_task(speak())
    await asyncio.wait_for(got_two.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert server.wait_for(lambda seen: seen.disconnects == 1)
    assert memory.history("ann")[-1] == Message("assistant", f"{FIRST} {SECOND}")


async def test_persona_max_sentences_cuts_the_reply(
    server: ChatServer, chat: OpenAIChat, memory: ConversationMemory
) -> None:
    persona = Persona(max_sentences=2)
    sentences = [s async for s in talk(chat, memory, persona).reply("ann", "Hi")]
    assert sentences == [FIRST, SECOND]
    assert memory.history("ann")[-1] == Message("assistant", f"{FIRST} {SECOND}")


async def test_history_goes_to_the_backend_with_the_persona(
    server: ChatServer, chat: OpenAIChat, memory: ConversationMemory
) -> None:
    conversation = talk(chat, memory, Persona(name="Robin", eldercare=True, max_sentences=None))
    _ = [s async for s in conversation.reply("ann", "Good morning")]
    _ = [s async for s in conversation.reply("ann", "How are you?")]
    sent = server.seen.requests[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert "Robin" in sent[0]["content"] and "short sentences" in sent[0]["content"]
    assert sent[1:] == [
        {"role": "user", "content": "Good morning"},
        {"role": "assistant", "content": f"{FIRST} {SECOND} {THIRD}"},
        {"role": "user", "content": "How are you?"},
    ]


def test_memory_survives_a_new_instance_and_leaves_no_temp_files(tmp_path: Path) -> None:
    folder = tmp_path / "memory"
    first = ConversationMemory(folder)
    first.append("bob/../x", Message("user", "My cat is called Tom."))
    first.append("bob/../x", Message("assistant", "Tom is a fine name."))
    again = ConversationMemory(folder)
    assert again.history("bob/../x") == [
        Message("user", "My cat is called Tom."),
        Message("assistant", "Tom is a fine name."),
    ]
    assert again.history("someone else") == []
    files = list(folder.iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"
    assert json.loads(files[0].read_text())["person_id"] == "bob/../x"


def test_memory_is_bounded_and_starts_with_a_user_turn(memory: ConversationMemory) -> None:
    for i in range(10):
        memory.append("ann", Message("user", f"question {i}"))
        memory.append("ann", Message("assistant", f"answer {i}"))
    kept = memory.history("ann")
    assert len(kept) == 6 and kept[0] == Message("user", "question 7")
    assert kept[-1] == Message("assistant", "answer 9")
    memory.append("ann", Message("user", "question 10"))  # 7 messages: trimmed to 5
    kept = memory.history("ann")
    assert kept[0] == Message("user", "question 8") and len(kept) == 5
    assert ConversationMemory(memory.directory, max_turns=6).history("ann") == kept


def test_memory_merges_repeated_user_turns(memory: ConversationMemory) -> None:
    memory.append("ann", Message("user", "Hello?"))
    memory.append("ann", Message("user", "Are you there?"))
    assert memory.history("ann") == [Message("user", "Hello?\nAre you there?")]


def test_memory_moves_an_unreadable_file_aside(memory: ConversationMemory) -> None:
    memory.append("ann", Message("user", "Hi"))
    (path,) = memory.directory.glob("*.json")
    path.write_text("{not json")
    fresh = ConversationMemory(memory.directory)
    assert fresh.history("ann") == []
    assert path.with_suffix(".corrupt").exists()


def test_record_played_keeps_only_what_was_heard(
    chat: OpenAIChat, memory: ConversationMemory
) -> None:
    conversation = talk(chat, memory)
    memory.extend("ann", [Message("user", "Hi"), Message("assistant", f"{FIRST} {SECOND}")])
    conversation.record_played("ann", f"{FIRST} I am gl")
    assert memory.history("ann")[-1] == Message("assistant", f"{FIRST} I am gl")
    assert ConversationMemory(memory.directory).history("ann")[-1].content == f"{FIRST} I am gl"
    conversation.record_played("ann", "   ")
    assert memory.history("ann") == [Message("user", "Hi")]
    conversation.record_played("ann", "nothing to replace")  # last turn is the user's
    assert memory.history("ann") == [Message("user", "Hi")]


def test_eldercare_persona_prompt() -> None:
    plain = system_prompt(Persona())
    care = system_prompt(Persona(name="Robin", eldercare=True, max_sentences=2, language="fr"))
    assert "You are Robin" in care and "French" in care
    for phrase in ("slowly and clearly", "short sentences", "simple, everyday words",
                   "at most 2 sentences", "care staff"):  # fmt: skip
        assert phrase in care
        assert phrase not in plain
    assert "English" in plain and "AI companion" in plain


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)
async def test_reply_with_the_embedded_model(memory: ConversationMemory) -> None:
    backend = await LlamaCppChat.load(LlamaCppOptions(seed=0))
    options = ConversationOptions(generation=GenerationOptions(max_tokens=60, temperature=0.0))
    conversation = Conversation(backend, Persona(eldercare=True, max_sentences=2), memory, options)
    try:
        sentences = [s async for s in conversation.reply("ann", "What is a good breakfast?")]
    finally:
        await backend.aclose()
    assert 1 <= len(sentences) <= 2 and all(s.strip() for s in sentences)
    assert memory.history("ann")[-1] == Message("assistant", " ".join(sentences))


async def test_the_first_clause_is_spoken_before_its_sentence_ends_and_is_no_sentence(
    server: ChatServer, chat: OpenAIChat, memory: ConversationMemory
) -> None:
    server.reset(
        Behaviour(reply="Oh, what a lovely morning it is, my friend. It is sunny. Bye now. More.")
    )
    options = ConversationOptions(retry_delay_s=0.01, first_clause_chars=10)
    persona = Persona(max_sentences=3)
    pieces = [s async for s in talk(chat, memory, persona, options).reply("ann", "Hi")]
    # "Oh," is too short to stand alone; the first comma after 10 characters cuts.
    assert pieces == [
        "Oh, what a lovely morning it is,",
        "my friend.",
        "It is sunny.",
        "Bye now.",
    ]  # three sentences: the clause did not use up one of them
    assert memory.history("ann")[-1] == Message("assistant", " ".join(pieces))
    with pytest.raises(ConfigError, match="first_clause_chars"):
        ConversationOptions(first_clause_chars=0)
