"""Flat turn time with the real embedded SmolLM2: what the engine evaluates per turn.

Counted in tokens at ``Llama.eval`` (``LlamaCppChat.last_reply``), never in wall time:
timings belong to ``likeness bench turns``. Greedy, short replies, one thread.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from runtime.bench_turns import QUESTIONS as BENCH_QUESTIONS
from runtime.dialogue.base import GenerationOptions, Message
from runtime.dialogue.conversation import (
    Conversation,
    ConversationMemory,
    ConversationOptions,
    Persona,
    system_prompt,
)
from runtime.dialogue.llamacpp import LlamaCppChat, LlamaCppOptions
from runtime.dialogue.prompt_states import PromptStates, SavedState

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)

PERSONA = Persona(max_sentences=1)
OPTIONS = ConversationOptions(generation=GenerationOptions(max_tokens=20, temperature=0.0))
QUESTIONS = BENCH_QUESTIONS[:7]  # 7 turns: the 6-message history is trimmed to 4 at turns 4 and 6
# What a turn may evaluate beyond the question's own tokens: the user message's end
# and the reply header ("<|im_end|>\n<|im_start|>assistant\n", 5 tokens with SmolLM2's
# template) and a token merged across the boundary.
HEADER_TOKENS = 8


async def load_chat() -> LlamaCppChat:
    return await LlamaCppChat.load(LlamaCppOptions(seed=0, n_threads=1))


async def ask(conversation: Conversation, person: str, question: str) -> str:
    said = [s async for s in conversation.reply(person, question)]
    await conversation.warmed()
    return " ".join(said)


def question_tokens(chat: LlamaCppChat, question: str) -> int:
    return len(chat._llama.tokenize(question.encode(), add_bos=False, special=False))  # noqa: SLF001


@pytest.mark.slow
async def test_each_turn_evaluates_only_its_question_as_the_history_grows_and_trims(
    tmp_path: Path,
) -> None:
    chat = await load_chat()
    memory = ConversationMemory(tmp_path, max_turns=6, trim_to=4)
    conversation = Conversation(chat, PERSONA, memory, OPTIONS)
    await conversation.warm()  # what Companion.load() does: the persona alone
    replies, warms, lengths = [], [], []
    try:
        for question in QUESTIONS:
            await ask(conversation, "ann", question)
            replies.append(chat.last_reply)
            warms.append(chat.last_warm)
            lengths.append(len(memory.history("ann")))
        limits = [question_tokens(chat, q) + HEADER_TOKENS for q in QUESTIONS]
    finally:
        await chat.aclose()
    # The history grew and was trimmed (6 → 4 messages) on the way...
    assert max(lengths) == 6 and 4 in lengths[lengths.index(6) :]
    # ... and a trim re-evaluated the whole history between turns, not on a turn:
    assert max(w.evaluated_tokens for w in warms) > 3 * max(r.evaluated_tokens for r in replies)
    for limit, stats in zip(limits, replies, strict=True):
        assert stats.evaluated_tokens <= limit, stats
    # Reused: the persona, then the persona and a history that grew well past a question.
    assert max(r.reused_tokens for r in replies) > replies[0].reused_tokens + 60
    # The first turn after the persona was warmed evaluates no more than a later one.
    assert replies[0].evaluated_tokens <= max(r.evaluated_tokens for r in replies[1:])


@pytest.mark.slow
async def test_people_never_share_a_cached_history(tmp_path: Path) -> None:
    chat, fresh = await load_chat(), await load_chat()
    try:
        shared = Conversation(chat, PERSONA, ConversationMemory(tmp_path / "a"), OPTIONS)
        await shared.warm()
        await ask(shared, "ann", "My name is Ann and my cat is called Tiger.")
        await ask(shared, "ann", "What is my cat called?")
        persona_prefix = chat.last_warm and len(
            chat._prompt.next_turn_prefix([Message("system", system_prompt(PERSONA))])  # noqa: SLF001
        )
        bob_heard = await ask(shared, "bob", "What is my cat called?")
        bob = chat.last_reply
        assert bob is not None and bob.reused_tokens <= persona_prefix
        # Bob's answer is the one of a model that never met Ann.
        alone = Conversation(fresh, PERSONA, ConversationMemory(tmp_path / "b"), OPTIONS)
        await alone.warm()
        assert await ask(alone, "bob", "What is my cat called?") == bob_heard
        # Ann's own evaluated history comes back for her after Bob spoke.
        await ask(shared, "ann", "Thank you.")
        ann = chat.last_reply
        assert ann is not None and ann.restored and ann.reused_tokens > persona_prefix + 20
        assert ann.evaluated_tokens <= question_tokens(chat, "Thank you.") + HEADER_TOKENS
    finally:
        await chat.aclose()
        await fresh.aclose()


@pytest.mark.slow
async def test_forgetting_a_person_drops_their_saved_prompt(tmp_path: Path) -> None:
    chat = await load_chat()
    try:
        memory = ConversationMemory(tmp_path)
        conversation = Conversation(chat, PERSONA, memory, OPTIONS)
        await ask(conversation, "ann", "Hello!")
        assert chat.states.slots() == ["ann"]
        memory.forget("ann")
        assert chat.states.slots() == []
        with pytest.raises(ValueError, match="system prompt"):
            await chat.warm([Message("system", "x"), Message("user", "a history")], None)
    finally:
        await chat.aclose()


def test_saved_states_are_bounded_and_only_a_slots_own_or_shared_are_seen() -> None:
    states = PromptStates(capacity_bytes=100)
    persona = SavedState((1, 2, 3), b"p" * 10)
    states.put(None, persona)
    states.put("ann", SavedState((1, 2, 3, 4, 5), b"a" * 60))
    assert states.best("ann", [1, 2, 3, 4, 5, 6]) == (states.best("ann", [1, 2, 3, 4, 5])[0], 5)
    assert states.best("bob", [1, 2, 3, 4, 5, 6]) == (persona, 3)  # never Ann's
    states.put("bob", SavedState((1, 2, 3, 9), b"b" * 60))  # 120 bytes: Ann's goes
    assert states.slots() == ["bob"] and states.slot_bytes == 60
    assert states.best("ann", [1, 2, 3, 4, 5]) == (persona, 3)  # the shared one stays
    epoch = states.epoch("bob")
    states.forget("bob")
    assert states.slots() == [] and states.best("bob", [1, 2, 3, 9]) == (persona, 3)
    states.put("bob", SavedState((1, 2, 3, 9), b"b"), epoch)  # computed before the forget
    assert states.slots() == []
    states.put("bob", SavedState((1, 2, 3, 9), b"b"), states.epoch("bob"))  # he came back
    assert states.slots() == ["bob"]
