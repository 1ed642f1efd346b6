"""``likeness bench conversation``: the conversation quality suite on the configured backend.

The configured dialogue backend, persona and conversation settings answer the scripted
exchanges of :mod:`runtime.convsuite.exchanges`; the checks of
:mod:`runtime.convsuite.checks` judge every reply. The memory lives in a temporary
folder, never the companion's own. Reproducible: llama.cpp is loaded with a fixed seed
(every reply samples from it), and ``temperature`` can be set to 0 (greedy) for a
backend that takes no seed.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime import components
from runtime.config import Settings
from runtime.convsuite.exchanges import exchanges
from runtime.convsuite.runner import ExchangeResult, run_suite, summarise
from runtime.dialogue.base import DialogueBackend

SEED = 0


async def _load_backend(settings: Settings) -> DialogueBackend:
    d = settings.dialogue
    if d.backend != "llamacpp":
        return await components.load_dialogue(settings)
    from runtime.dialogue.llamacpp import LlamaCppChat, LlamaCppOptions

    options = LlamaCppOptions(
        model_path=Path(d.model_path) if d.model_path else None,
        n_threads=d.n_threads or None,
        seed=SEED,
    )
    return await LlamaCppChat.load(options)


def suite_settings(
    settings: Settings,
    data_dir: Path,
    *,
    eldercare: bool | None = None,
    temperature: float | None = None,
) -> Settings:
    """``settings`` with its state under ``data_dir`` and the suite's overrides."""
    dialogue = settings.dialogue
    if temperature is not None:
        dialogue = dialogue.model_copy(update={"temperature": temperature})
    persona = settings.persona
    if eldercare is not None:
        persona = persona.model_copy(update={"eldercare": eldercare})
    return settings.model_copy(
        update={"data_dir": data_dir, "dialogue": dialogue, "persona": persona}
    )


async def run_conversation_bench(
    settings: Settings,
    *,
    short: bool = False,
    eldercare: bool | None = None,
    temperature: float | None = None,
    guard: bool = True,
    on_exchange: Callable[[ExchangeResult], None] | None = None,
) -> dict[str, Any]:
    """Run the suite; the result has ``metrics`` (flat), ``summary`` and ``exchanges``.

    Args:
        settings: the configuration (backend, persona, sampling).
        short: only the CI's handful of exchanges.
        eldercare: force ``persona.eldercare`` on or off (None: as configured).
        temperature: override ``dialogue.temperature`` (None: as configured).
        guard: False turns the reply guard off (``ConversationOptions.guard``): the
            model alone.
        on_exchange: called after each exchange (progress).

    Raises:
        DialogueError: the backend could not be loaded or failed.
    """
    from runtime.bench import machine_info

    chosen = exchanges(short)
    with tempfile.TemporaryDirectory(prefix="likeness-convsuite-") as tmp:
        s = suite_settings(settings, Path(tmp), eldercare=eldercare, temperature=temperature)
        backend = await _load_backend(s)
        try:
            conversation = components.conversation(s, backend)
            if not guard:
                conversation.options = replace(conversation.options, guard=False)
            await conversation.warm()  # as Companion.load() does: the persona alone
            detector = components.distress_detector(s)
            results = await run_suite(conversation, chosen, detector, on_exchange)
        finally:
            await backend.aclose()
    summary = summarise(results)
    metrics: dict[str, Any] = {
        "exchanges": summary["overall"]["exchanges"],
        "exchange_pass_rate": summary["overall"]["rate"],
        "turn_check_pass_rate": summary["overall"]["turn_check_rate"],
        **{f"{check}_rate": row["rate"] for check, row in summary["checks"].items()},
        "reply_p50_s": summary["overall"]["reply_p50_s"],
        "errors": summary["overall"]["errors"],
    }
    d, p = s.dialogue, s.persona
    return {
        "bench": "conversation",
        "machine": machine_info(),
        "config": {
            "backend": d.backend,
            "model": (d.model_path or "embedded SmolLM2-135M-Instruct Q4_1")
            if d.backend == "llamacpp"
            else d.model,
            "temperature": d.temperature,
            "max_tokens": d.max_tokens,
            "seed": SEED if d.backend == "llamacpp" else None,
            "persona": {
                "name": p.name,
                "eldercare": p.eldercare,
                "max_sentences": p.max_sentences,
            },  # fmt: skip
            "short": short,
            "guard": guard,
        },
        "metrics": metrics,
        "summary": summary,
        "exchanges": [r.to_dict() for r in results],
    }


def bench_conversation(settings: Settings, **kwargs: Any) -> dict[str, Any]:
    """Blocking :func:`run_conversation_bench` (for the command line)."""
    return asyncio.run(run_conversation_bench(settings, **kwargs))
