"""warm_up with the real embedded models: every stage runs once, and the first reply
after it evaluates no more than its question (counted in tokens, not seconds)."""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path

import pytest

from runtime import components
from runtime.avatar_components import SYNTHETIC_REF, avatar_generator, resolve_avatar
from runtime.config import load_config
from runtime.dialogue.base import GenerationOptions, Message
from runtime.dialogue.conversation import (
    Conversation,
    ConversationMemory,
    ConversationOptions,
    Persona,
    system_prompt,
)
from runtime.dialogue.llamacpp import LlamaCppChat, LlamaCppOptions
from runtime.warmup import warm_up
from voice.asr import WhisperASR
from voice.tts.registry import load_tts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
    ),
]
QUESTION = "What is your name?"
HEADER_TOKENS = 8  # as in test_prompt_cache: the user message's end and the reply header


async def test_warm_up_runs_each_stage_and_leaves_the_personas_evaluated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIKENESS_DATA_DIR", str(tmp_path))
    settings = load_config()
    chat = await LlamaCppChat.load(LlamaCppOptions(seed=0, n_threads=1))
    robin, ada = Persona(), Persona(name="Ada", eldercare=True)
    try:
        report = await warm_up(
            asr=WhisperASR.load(),
            voices=[load_tts("piper", None)],
            dialogue=chat,
            personas=[robin, ada, robin],
            make_detector=partial(components.load_turn_detector, settings),
            make_generator=partial(
                avatar_generator, settings, resolve_avatar(settings, SYNTHETIC_REF), None
            ),
        )
        assert "how are you" in report.heard.lower()
        stages = {"tts_0", "vad", "asr", "llm_persona_0", "llm_persona_1", "face"}
        assert set(report.seconds) == stages
        for persona in (robin, ada):  # each persona's prompt is kept, whole
            prefix = chat._prompt.next_turn_prefix([Message("system", system_prompt(persona))])  # noqa: SLF001
            assert chat.states.best(None, prefix)[1] == len(prefix)
        assert chat.states.slots() == []  # nobody's history
        # The first person's first reply evaluates only the question.
        conversation = Conversation(
            chat,
            robin,
            ConversationMemory(tmp_path / "memory"),
            ConversationOptions(generation=GenerationOptions(max_tokens=8, temperature=0.0)),
        )
        _ = [s async for s in conversation.reply("first", QUESTION)]
        await conversation.warmed()
        stats = chat.last_reply
        limit = len(chat._llama.tokenize(QUESTION.encode(), add_bos=False)) + HEADER_TOKENS  # noqa: SLF001
        assert stats is not None and stats.evaluated_tokens <= limit, stats
    finally:
        await chat.aclose()
