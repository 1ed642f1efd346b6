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
        cache_slot: whose saved prompt state a caching backend may reuse (one per
            person; None: only the shared persona states). Never another person's.
    """

    max_tokens: int = 160
    temperature: float = 0.7
    stop: tuple[str, ...] = ()
    cache_slot: str | None = None


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


@runtime_checkable
class PromptWarming(Protocol):
    """A backend that can evaluate a known prompt prefix ahead of the next turn.

    Optional: :class:`~runtime.dialogue.conversation.Conversation` warms a person's
    history after every change when its backend has this, and forgets it with the
    person. Warming is a speed-up only; it may do nothing.
    """

    async def warm(self, messages: Sequence[Message], slot: str | None = None) -> None:
        """Evaluate what the next prompt after ``messages`` starts with; keep it for
        ``slot`` (None: a shared persona prompt, system messages only)."""
        ...

    def forget(self, slot: str) -> None:
        """Drop whatever is kept for ``slot``."""
        ...
