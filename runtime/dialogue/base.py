"""The contract every dialogue (LLM) backend implements.

A backend streams the reply's text pieces (tokens or small groups of them) for a
list of chat messages. Cancelling the consuming task, or closing the iterator,
must stop generation promptly (the engine stops within one token).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """Sampling options for one reply.

    Attributes:
        max_tokens: upper bound on generated tokens.
        temperature: sampling temperature; 0 for greedy.
        stop: strings that end the reply.
    """

    max_tokens: int = 160
    temperature: float = 0.7
    stop: tuple[str, ...] = ()


@runtime_checkable
class DialogueBackend(Protocol):
    """Streaming chat completion."""

    name: str

    def stream(self, messages: Sequence[Message], options: GenerationOptions) -> AsyncIterator[str]:
        """Yield text pieces of the reply as they are generated.

        Raises:
            runtime.errors.DialogueError: the backend failed; ``retryable`` says
                whether the caller's single retry point may try again.
        """
        ...

    async def aclose(self) -> None:
        """Release connections or engine memory."""
        ...
