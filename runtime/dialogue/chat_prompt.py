"""Chat messages → the prompt tokens a llama.cpp model evaluates.

The backend renders and tokenizes prompts itself (the way llama-cpp-python's chat
handler does) so that it knows the exact tokens of every prompt: that is what lets
it evaluate a history's prefix ahead of the next turn, save it, and find it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime.dialogue.base import Message
from runtime.dialogue.prompt_states import common_prefix
from runtime.errors import ConfigError

_PROBES = ("a", "b")  # two different next questions: what both prompts share is fixed


class ChatPrompt:
    """The prompt format of a loaded ``llama_cpp.Llama``.

    Args:
        llama: the loaded model (used to tokenize and for its GGUF chat template).
        chat_format: a llama-cpp-python format name (``chatml``, ``llama-2``, ...);
            None uses the GGUF's own template.

    Raises:
        ConfigError: no template in the GGUF and no ``chat_format``, or an unknown name.
    """

    def __init__(self, llama: Any, chat_format: str | None = None) -> None:
        from llama_cpp import llama_chat_format

        self._llama = llama
        if chat_format is None:
            template = llama.metadata.get("tokenizer.chat_template")
            if not template:
                raise ConfigError(
                    "dialogue.llamacpp: the GGUF has no chat template; set chat_format "
                    "(e.g. 'chatml')"
                )
            eos, bos = llama.token_eos(), llama.token_bos()
            text = llama._model.token_get_text  # noqa: SLF001 - as llama-cpp-python does
            self._format: Any = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=text(eos) if eos != -1 else "",
                bos_token=text(bos) if bos != -1 else "",
            )
        else:
            name = "format_" + chat_format.replace("-", "_").replace(".", "_")
            self._format = getattr(llama_chat_format, name, None)
            if self._format is None:
                raise ConfigError(f"dialogue.llamacpp.chat_format: unknown format {chat_format!r}")

    def render(self, messages: Sequence[Message]) -> tuple[list[int], list[str]]:
        """The prompt tokens (ending where the reply begins) and the stop strings."""
        result = self._format(messages=[{"role": m.role, "content": m.content} for m in messages])
        tokens = self._llama.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = result.stop if isinstance(result.stop, list) else [result.stop]
        return tokens, [s for s in stop if s]

    def tokens(self, messages: Sequence[Message]) -> list[int]:
        """The prompt tokens of ``messages`` (see :meth:`render`)."""
        return self.render(messages)[0]

    def next_turn_prefix(self, messages: Sequence[Message]) -> list[int]:
        """The tokens every prompt of the next turn starts with, whatever the person asks.

        ``messages`` are the system message and the history, without the next question.
        """
        first, second = (self.tokens([*messages, Message("user", p)]) for p in _PROBES)
        return first[: common_prefix(first, second)]
