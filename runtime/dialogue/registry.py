"""Build a dialogue backend by name.

Backends are imported only when chosen, so ``openai`` works without
llama-cpp-python installed.
"""

from __future__ import annotations

from runtime.dialogue.base import DialogueBackend
from runtime.errors import DialogueError

BACKENDS = ("llamacpp", "openai")


async def load_dialogue(name: str, options: object | None = None) -> DialogueBackend:
    """Load the backend called ``name``.

    Args:
        name: one of :data:`BACKENDS`.
        options: ``OpenAIOptions`` for "openai" (required); ``LlamaCppOptions``
            or None (the embedded SmolLM2) for "llamacpp".

    Returns:
        A ready backend; the caller must ``await backend.aclose()`` when done.

    Raises:
        DialogueError: unknown name, options of the wrong type, or loading failed.
    """
    if name == "openai":
        from runtime.dialogue.openai import OpenAIChat, OpenAIOptions

        if not isinstance(options, OpenAIOptions):
            raise DialogueError(
                f"dialogue backend 'openai' needs OpenAIOptions (at least model=...), "
                f"got {type(options).__name__}"
            )
        return await OpenAIChat.load(options)
    if name == "llamacpp":
        from runtime.dialogue.llamacpp import LlamaCppChat, LlamaCppOptions

        if options is not None and not isinstance(options, LlamaCppOptions):
            raise DialogueError(
                f"dialogue backend 'llamacpp' needs LlamaCppOptions or None, "
                f"got {type(options).__name__}"
            )
        return await LlamaCppChat.load(options)
    raise DialogueError(f"unknown dialogue backend {name!r}; choose one of: {', '.join(BACKENDS)}")
